"""`pip install -e .` gives a script in any directory the library, and nothing else (issue 31).

Installs the repository in editable mode into a temporary prefix (no network:
`--no-deps --no-build-isolation`, the environment's own setuptools), then runs
scripts from another directory whose only link to the repository is that
prefix's site directory: the callbacks and the architectures import, the
README's callback example runs as written; the application's generic top-level
names (data, utils, training, ...) are not importable.
"""

import json
import os
import subprocess
import sys
import sysconfig

from tests.conftest import ROOT
from tests.test_readme_example import readme_example

# A site directory as pip's own (its .pth files processed), then the script.
SITE = "import runpy, site, sys; site.addsitedir(sys.argv[1]); runpy.run_path(sys.argv[2], run_name='__main__')"
SCRIPT = """
import importlib, json, sys
from callbacks import MultiEMA, SWA
import models
found = {name: importlib.util.find_spec(name) is not None
         for name in ("app", "data", "evaluation", "training", "tuning", "utils")}
print(json.dumps({"callbacks": sys.modules["callbacks"].__file__, "models": models.__file__,
                  "resnet20": models.build_model("resnet20", 10).count_params(), "found": found}))
"""


def test_an_editable_install_serves_the_library_and_only_it_from_any_directory(tmp_path):
    prefix = tmp_path / "prefix"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--prefix", str(prefix), "-e", ROOT], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    site_dir = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    (elsewhere / "check.py").write_text(SCRIPT, encoding="utf-8")
    (elsewhere / "example.py").write_text(readme_example(), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", SITE, site_dir, "check.py"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["callbacks"] == os.path.join(ROOT, "callbacks", "__init__.py")
    assert result["models"] == os.path.join(ROOT, "models", "__init__.py")
    assert result["resnet20"] == 271_098  # all parameters (269,722 trainable: tests/test_models.py), as app.train prints
    assert result["found"] == dict.fromkeys(("app", "data", "evaluation", "training", "tuning", "utils"), False)
    # The README's example, as a user's script elsewhere (tests/test_readme_example.py checks its numbers).
    example = subprocess.run([sys.executable, "-c", SITE, site_dir, "example.py"], cwd=elsewhere,
                             env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)
    assert example.returncode == 0, example.stderr[-2000:]
    assert (elsewhere / "ema-weights" / "ema_0.99_acc.weights.h5").is_file()

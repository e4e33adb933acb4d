"""PyTorch twin of `models/resnet.py`'s ResNets and its training loop: bench/gpu_throughput.py's peer.

Layer for layer the Keras builder with projection shortcuts (ResNet-18/34):
3x3 stem without bias, BN, ReLU; stages of basic blocks (the first at stride
1, the rest at 2), a 1x1 conv + BN shortcut where a block changes shape;
global average pooling and a linear head with bias. Convolutions pad
`kernel_size // 2` on every side, as `models/layers.conv2d` does explicitly;
BatchNorm uses PyTorch `momentum=0.1`, Keras's 0.9 (models/layers.py).
The same initialisation (He-normal fan-out convolutions, PyTorch's default
linear) so that both start from the same distribution of weights.

The loop is the usual fast recipe: torch.compile, channels_last, bf16
autocast, SGD (fused on CUDA), batches copied from pinned host memory.

Imported only when PyTorch is installed; nothing in the project imports it.
"""

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # Keras BN_MOMENTUM = 0.9 in models/layers.py
BN_EPSILON = 1e-5


def conv_bn(in_channels, out_channels, *, kernel_size, stride):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPSILON, momentum=BN_MOMENTUM),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers added to the shortcut, then ReLU (post-activation)."""

    def __init__(self, in_channels, filters, stride):
        super().__init__()
        self.conv_bn1 = conv_bn(in_channels, filters, kernel_size=3, stride=stride)
        self.conv_bn2 = conv_bn(filters, filters, kernel_size=3, stride=1)
        changes_shape = stride != 1 or in_channels != filters
        self.shortcut = (conv_bn(in_channels, filters, kernel_size=1, stride=stride) if changes_shape
                         else nn.Identity())

    def forward(self, x):
        residual = self.conv_bn2(torch.relu(self.conv_bn1(x)))
        return torch.relu(self.shortcut(x) + residual)


class ResNet(nn.Module):
    def __init__(self, *, num_classes, stage_filters, blocks_per_stage):
        super().__init__()
        self.stem = conv_bn(3, stage_filters[0], kernel_size=3, stride=1)
        blocks, in_channels = [], stage_filters[0]
        for stage_index, (filters, num_blocks) in enumerate(zip(stage_filters, blocks_per_stage)):
            for block_index in range(num_blocks):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, filters, stride))
                in_channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)  # as models/layers.dense

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def parameter_counts(module):
    """Trainable parameters and BatchNorm moving statistics, counted as Keras counts them.

    Keras's non-trainable weights are the moving mean and variance; PyTorch
    also keeps an integer `num_batches_tracked` per BN layer, left out here.
    """
    statistics = sum(
        layer.running_mean.numel() + layer.running_var.numel()
        for layer in module.modules() if isinstance(layer, nn.BatchNorm2d)
    )
    trainable = sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
    return {"trainable": trainable, "batch_norm_statistics": statistics}


def multiply_accumulates(module, image_size):
    """Forward multiply-accumulates per image of the convolutions and linear layers (hooks on one forward)."""
    total = 0

    def count(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += output[0].numel() * layer.weight[0].numel()  # per output value: k*k*C_in
        else:
            total += layer.weight.numel()

    hooks = [layer.register_forward_hook(count) for layer in module.modules()
             if isinstance(layer, (nn.Conv2d, nn.Linear))]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        module(torch.zeros(1, 3, image_size, image_size))
    module.train(was_training)
    for hook in hooks:
        hook.remove()
    return total


def peer(*, stage_filters, blocks_per_stage, num_classes, image_size, train, validation, batch_size,
         eval_batch_size, learning_rate, momentum, weight_decay, compile_backend, cpu_threads=None):
    """The model, an epoch of training and an evaluation over NumPy (x NHWC float32, y int) arrays.

    Returns a dict: `train_epoch(images=None)` and `evaluate()`, each returning
    once the device is done (their `.item()` waits), and the model's counts.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cpu_threads:
        # On shared CPU cores PyTorch's OpenMP threads spin against other jobs:
        # 1-3 s per smoke step with 2 threads at load 6, 20 ms with one.
        torch.set_num_threads(cpu_threads)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = ResNet(num_classes=num_classes, stage_filters=stage_filters, blocks_per_stage=blocks_per_stage)
    counts, macs = parameter_counts(model), multiply_accumulates(model, image_size)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, nesterov=False,
                                weight_decay=weight_decay, **({"fused": True} if cuda else {}))
    # Static shapes, as XLA compiles them: the evaluation batch would otherwise
    # turn on dynamic-shape recompilation.
    compiled = torch.compile(model, backend=compile_backend, dynamic=False)

    def on_host(arrays):
        x, y = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]).long()
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        return x.permute(0, 3, 1, 2), y  # NHWC memory viewed as NCHW is channels_last: no copy

    train_x, train_y = on_host(train)
    validation_x, validation_y = on_host(validation)

    def batches(x, y, size, images):
        for start in range(0, images, size):
            yield (x[start:start + size].to(device, non_blocking=True),
                   y[start:start + size].to(device, non_blocking=True))

    def sums():
        return torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)

    def train_epoch(images=None):
        model.train()
        loss_sum, correct = sums()
        for x, y in batches(train_x, train_y, batch_size, images or len(train_x)):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = compiled(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()  # the loss and accuracy Keras's fit keeps
            correct += (logits.argmax(dim=1) == y).sum()
        return loss_sum.item(), correct.item()

    def evaluate():
        model.eval()
        loss_sum, correct = sums()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            for x, y in batches(validation_x, validation_y, eval_batch_size, len(validation_x)):
                logits = compiled(x)
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
        model.train()
        return loss_sum.item(), correct.item()

    return {
        "train_epoch": train_epoch, "evaluate": evaluate, "parameters": counts, "macs_per_image": macs,
        "compile": f"torch.compile(backend={compile_backend!r}, dynamic=False), channels_last, bf16 autocast",
        "optimizer": f"torch.optim.SGD({'fused' if cuda else 'foreach'}, nesterov=False)",
        "cpu_threads": torch.get_num_threads(),
    }

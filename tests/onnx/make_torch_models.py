"""Exports a small CNN from PyTorch (torch 1.13) to ONNX at every opset from 9 to 17, with
batch-norm folded and kept, plus a random input and PyTorch's output for each, for test_onnx_reference.

    /usr/bin/python3 make_torch_models.py OUTDIR

Writes OUTDIR/<name>.onnx, <name>.in.f32 (input, raw float32), <name>.out.f32 (PyTorch output)
and OUTDIR/manifest.txt with one line per model: name N C H W outputs.
The net touches every op family the importer maps, including the shape arithmetic that
x.view(x.size(0), -1) and F.pad produce."""
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1, dilation=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)
        self.drop = nn.Dropout(0.3)
        # Opset 9 can only express "asymmetric" linear upsampling, which is not what PyTorch
        # computes (torch warns on export); those exports use nearest twice instead.
        self.bilinear = True
        self.strided = True
        for bn in (self.bn1, self.bn2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x):                                   # (N, 3, 16, 16)
        y = F.relu(self.bn1(self.conv1(x)))                 # (N, 8, 16, 16)
        y = F.leaky_relu(self.bn2(self.conv2(y)), 0.1)      # (N, 8, 8, 8)
        up = F.interpolate(y, scale_factor=2, mode="nearest")          # (N, 8, 16, 16)
        d = torch.sigmoid(self.deconv(y))                   # (N, 4, 16, 16)
        y = torch.cat([up * 0.5 + 0.25, d - 0.1], dim=1)    # (N, 12, 16, 16)
        y = F.max_pool2d(y, 2)                              # (N, 12, 8, 8)
        y = torch.tanh(self.conv3(y)) / 2.0                 # (N, 16, 8, 8)
        # ResNet's option-A shortcut at odd offsets: Slices, then a Pad of every axis (Lathe's
        # inference runs the chain as one copy). Opset 9's Slice takes no steps.
        s = y[:, 4:12, ::2, 1::2] if self.strided else y[:, 4:12, 0:4, 1:5]  # (N, 8, 4, 4)
        y = y + F.pad(s, (2, 2, 1, 3, 4, 4))                # (N, 16, 8, 8)
        y = F.hardtanh(y, -0.4, 0.4)                        # Clip
        y = F.pad(y, (1, 1, 1, 1), value=0.05)              # (N, 16, 10, 10)
        y = y[:, :, 1:9, 1:9]                               # Slice (N, 16, 8, 8)
        y = F.avg_pool2d(y, 2)                              # (N, 16, 4, 4)
        if self.bilinear:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)  # (N, 16, 8, 8)
        else:
            y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.avg_pool2d(y, 2)                              # (N, 16, 4, 4)
        y = y.permute(0, 1, 3, 2).contiguous()              # Transpose
        y = y.unsqueeze(1).squeeze(1)                       # Unsqueeze, Squeeze
        y = y.view(y.size(0), -1)                           # Shape, Gather, Concat, Reshape
        y = self.drop(F.relu(self.fc1(y)))
        return F.softmax(self.fc2(y), dim=1)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(3, 3, 16, 16)
    lines = []
    for opset in range(9, 18):
        net.bilinear = opset >= 11
        net.strided = opset >= 10
        with torch.no_grad():
            ref = net(x)
        for bn in ("folded", "kept"):
            name = f"net_opset{opset}_bn{bn}"
            path = os.path.join(out, name + ".onnx")
            # The default (eval) export fuses BatchNormalization into the convolutions; PRESERVE
            # without constant folding keeps it as inference-mode BatchNormalization nodes.
            mode = torch.onnx.TrainingMode.EVAL if bn == "folded" else torch.onnx.TrainingMode.PRESERVE
            torch.onnx.export(net, x, path, opset_version=opset, input_names=["input"],
                              output_names=["probs"], dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
                              training=mode, do_constant_folding=(bn == "folded"))
            x.numpy().tofile(os.path.join(out, name + ".in.f32"))
            ref.numpy().tofile(os.path.join(out, name + ".out.f32"))
            lines.append(f"{name} 3 3 16 16 {ref.numel()}")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

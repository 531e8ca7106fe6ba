#!/usr/bin/python3
"""Captures real activations for `lathe bench codec` and the controller test.

Builds ResNet-20 (CIFAR variant, option-A shortcuts as in Idelbayev's pretrained models) in
torch, loads its weights from the initializers of resnet20-cifar10-bn.onnx, decodes CIFAR-10
test JPEGs with libjpeg-turbo through ctypes (no Pillow or torchvision needed), runs one batch
with batch norm in training mode, and writes to an HDF5 file:

  /acts/<layer>        float32  the input of every Conv2d and Linear layer (what a stash keeps)
  /dy/<layer>          float32  dL/d(output) of that layer (cross-entropy loss), for the
                                gradient-error test
  /w/<layer>           float32  the layer's weight
  /y                   int32    the labels of the batch
  attributes per acts dataset: kind ("conv"/"linear"), stride, pad

Usage: capture_activations.py OUT.h5 [--n 256] [--data DIR]
Exits 77 (skip) when the shared data folder is absent.
"""
import argparse
import ctypes
import ctypes.util
import os
import sys

import h5py
import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout // 4 if (stride != 1 or cin != cout) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.pad:
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate([16, 32, 64]):
            blocks = []
            for b in range(3):
                blocks.append(Block(cin, cout, 2 if (i > 0 and b == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_weights(model, path):
    m = onnx.load(path)
    inits = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    state = model.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        sys.exit("weights missing from %s: %s" % (path, missing[:5]))
    for k in state:
        if k in inits:
            state[k].copy_(inits[k])


def decode_jpegs(blob, offsets, n):
    lib = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    lib.tjInitDecompress.restype = ctypes.c_void_p
    lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    h = lib.tjInitDecompress()
    out = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        b = bytes(blob[offsets[i]:offsets[i + 1]])
        buf = out[i]
        rc = lib.tjDecompress2(h, b, len(b), buf.ctypes.data, 32, 0, 32, 0, 0)  # TJPF_RGB = 0
        if rc != 0:
            sys.exit("JPEG %d does not decode" % i)
    lib.tjDestroy(h)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=256)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "..", "shared", "data"))
    a = ap.parse_args()
    h5 = os.path.join(a.data, "cifar10-jpeg.h5")
    onnx_path = os.path.join(a.data, "models", "resnet20-cifar10-bn.onnx")
    if not (os.path.exists(h5) and os.path.exists(onnx_path)):
        print("shared data not found under %s: skipped" % a.data)
        sys.exit(77)
    torch.manual_seed(0)
    model = ResNet20()
    load_weights(model, onnx_path)
    with h5py.File(h5, "r") as f:
        offsets = f["/test/offsets"][: a.n + 1]
        blob = f["/test/jpeg"][offsets[0]:offsets[a.n]]
        offsets = offsets - offsets[0]
        y = torch.from_numpy(f["/test/y"][: a.n].astype(np.int64))
    img = decode_jpegs(blob, offsets, a.n).astype(np.float32) / 255.0
    x = torch.from_numpy(((img - MEAN) / STD).transpose(0, 3, 1, 2).copy())

    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    print("eval-mode accuracy on %d test images: %.2f%%" % (a.n, 100 * acc))

    model.train()  # batch norm with batch statistics, as during training
    acts, dys, layers = {}, {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            layers.append((name, mod))
            mod.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, i[0].detach().clone()))
            mod.register_full_backward_hook(lambda m, gi, go, name=name: dys.__setitem__(name, go[0].detach().clone()))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    zeros = sum((acts[n] == 0).sum().item() for n, _ in layers)
    total = sum(acts[n].numel() for n, _ in layers)
    with h5py.File(a.out, "w") as f:
        f.attrs["source"] = "ResNet-20 (resnet20-cifar10-bn.onnx), %d CIFAR-10 test JPEGs, BN train mode" % a.n
        f.attrs["zero_fraction"] = zeros / total
        f.create_dataset("y", data=y.numpy().astype(np.int32))
        for order, (name, mod) in enumerate(layers):
            d = f.create_dataset("acts/" + name, data=acts[name].numpy())
            d.attrs["order"] = order
            d.attrs["kind"] = "conv" if isinstance(mod, nn.Conv2d) else "linear"
            if isinstance(mod, nn.Conv2d):
                d.attrs["stride"] = mod.stride[0]
                d.attrs["pad"] = mod.padding[0]
            f.create_dataset("dy/" + name, data=dys[name].numpy())
            f.create_dataset("w/" + name, data=mod.weight.detach().numpy())
    print("wrote %d layers, %.1f MB of inputs, %.1f%% exact zeros to %s" %
          (len(layers), total * 4 / 1e6, 100.0 * zeros / total, a.out))


if __name__ == "__main__":
    main()

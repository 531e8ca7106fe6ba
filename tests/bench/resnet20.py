"""PyTorch 1.13 CPU side of the ResNet-20 benchmark: the same model (He et al. 2016, option-A
shortcuts as in Yerlan Idelbayev's pytorch_resnet_cifar10), batch, thread count and step
counts as bench_resnet20, printed as one JSON line with the same keys.

    /usr/bin/python3 resnet20.py THREADS BATCH TRAIN_STEPS INFER_STEPS
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if stride != 1 or cin != cout else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def main():
    threads, batch, train_steps, infer_steps = (int(a) for a in sys.argv[1:5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet20()
    macs = 40551040  # per image, as lt_graph_macs counts it
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    model.train()
    t_train = 0.0
    for s in range(-1, train_steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if s >= 0:
            t_train += time.perf_counter() - t0
    model.eval()
    t_inf = 0.0
    with torch.no_grad():
        for s in range(-1, infer_steps):
            t0 = time.perf_counter()
            model(x)
            if s >= 0:
                t_inf += time.perf_counter() - t0
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    torch.mm(a, b)
    best = min((lambda t0: (torch.mm(a, b), time.perf_counter() - t0)[1])(time.perf_counter())
               for _ in range(5))
    train_ips = train_steps * batch / t_train
    infer_ips = infer_steps * batch / t_inf
    print(json.dumps({"engine": "pytorch", "threads": threads, "batch": batch,
                      "train_images_per_s": round(train_ips, 2),
                      "infer_images_per_s": round(infer_ips, 2),
                      "train_gflops": round(train_ips * 6 * macs / 1e9, 2),
                      "infer_gflops": round(infer_ips * 2 * macs / 1e9, 2),
                      "sgemm_gflops": round(2 * 1024 ** 3 / best / 1e9, 2)}))


main()

"""PyTorch twins of the lathe model zoo (engine/src/graph/zoo.c), with the same parameter names,
for the reference tests: the CIFAR ResNet as in Yerlan Idelbayev's pytorch_resnet_cifar10
(option-A shortcuts), VGG-16 with BN, the small CNN and the 2-level U-Net."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.pad is not None:  # option A: subsample, zero-pad channels
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_ch=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for li in range(3):
            planes = 16 << li
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i == 0 and li > 0) else 1))
                in_planes = planes
            setattr(self, "layer%d" % (li + 1), nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class VGG16(nn.Module):
    CFG = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]

    def __init__(self, num_classes=10, in_ch=3, hw=32):
        super().__init__()
        layers, c = [], in_ch
        for v in self.CFG:
            if v == 0:
                layers.append(nn.MaxPool2d(2, 2))
                hw //= 2
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * hw * hw, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10, in_ch=1, hw=28):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(in_ch, 32), nn.MaxPool2d(2),
                                      conv_bn_relu(32, 64), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(64 * (hw // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(self.features(x).flatten(1))))


class UNet(nn.Module):
    def __init__(self, in_ch=1, out_ch=1, w=16):
        super().__init__()
        dc = lambda a, b: nn.Sequential(conv_bn_relu(a, b), conv_bn_relu(b, b))
        self.enc1, self.enc2, self.mid = dc(in_ch, w), dc(w, 2 * w), dc(2 * w, 4 * w)
        self.dec2, self.dec1 = dc(6 * w, 2 * w), dc(3 * w, w)
        self.head = nn.Conv2d(w, out_ch, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[2:], mode="nearest"), e1], 1))
        return self.head(d1)


def build(name):
    """(model, input shape) for a zoo name."""
    if name.startswith("resnet"):
        return ResNet(int(name[6:])), (3, 32, 32)
    if name == "vgg16":
        return VGG16(), (3, 32, 32)
    if name == "smallcnn":
        return SmallCNN(), (1, 28, 28)
    if name == "unet":
        return UNet(), (1, 32, 32)
    raise ValueError(name)


def count(model, shape):
    """(multiply-accumulates per sample of conv and linear layers, parameters)."""
    macs = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out[0].numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            macs[0] += out[0].numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1,) + shape))
    for h in hs:
        h.remove()
    return macs[0], sum(p.numel() for p in model.parameters())

"""A face classifier shaped like MTCNN's ONet: a custom module whose forward returns a tuple
(boxes `[B, 4]`, landmarks `[B, 10]`, class probabilities `[B, num_classes]`)."""

import torch
from torch import nn


class TupleNet(nn.Module):
    """`[B, 3, H, W]` -> (boxes, landmarks, softmax scores); `conv3` is at H/4."""

    def __init__(self, num_classes: int = 2, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.boxes = nn.Linear(2 * width, 4)
        self.landmarks = nn.Linear(2 * width, 10)
        self.scores = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor):
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        pooled = h.mean((2, 3))
        return self.boxes(pooled), self.landmarks(pooled), torch.softmax(self.scores(pooled), 1)


def not_a_model(num_classes: int = 2):
    """A factory that returns something other than an `nn.Module`."""
    return {"num_classes": num_classes}

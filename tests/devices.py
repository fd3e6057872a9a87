"""The devices layer tests run on: the CPU always, CUDA when this machine has it."""
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')
DEVICES = [pytest.param('cpu', id='cpu'), pytest.param('cuda', id='cuda', marks=CUDA)]

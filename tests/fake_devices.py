"""Pretend GPUs on a CPU-only machine: tensors tagged with a CUDA device name, and a torch function mode that
fails any op mixing two tags the way CUDA does ("Expected all tensors to be on the same device"). Lets the
tests check the placement logic of a model split across GPUs (device_map=auto) without a GPU.

`place(module, "cuda:1")` tags a module's parameters and buffers and, like accelerate's AlignDevicesHook, moves
the inputs of its forward onto that device; `tensor.to("cuda:1")` inside the mode re-tags instead of copying.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

TAG = "_fake_device"


def tag_of(t: torch.Tensor) -> str | None:
    return getattr(t, TAG, None)


def tag(t: torch.Tensor, device: str) -> torch.Tensor:
    setattr(t, TAG, str(torch.device(device)))
    return t


def _is_fake(device) -> bool:
    return device is not None and not isinstance(device, torch.dtype) and torch.device(device).type == "cuda"


class FakeDevices(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == torch.Tensor.device.__get__:
            found = tag_of(args[0])
            return torch.device(found) if found else func(*args)
        if func is torch.Tensor.to:
            return self._to(func, args, kwargs)
        target = kwargs.get("device")
        if _is_fake(target):  # a new tensor made "on the GPU": make it on the CPU and tag it
            kwargs["device"] = "cpu"
            return tree_map(lambda x: tag(x, target) if isinstance(x, torch.Tensor) else x, func(*args, **kwargs))
        tags = {tag_of(x) for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor) and x.dim() > 0}
        tags.discard(None)
        if len(tags) > 1:
            message = (f"Expected all tensors to be on the same device, but found at least two devices, "
                       f"{' and '.join(sorted(tags))}! ({getattr(func, '__name__', func)})")
            self.mixed.append(message)
            raise RuntimeError(message)
        out = func(*args, **kwargs)
        if tags:
            (device,) = tags
            out = tree_map(lambda x: tag(x, device) if isinstance(x, torch.Tensor) else x, out)
        return out

    def _to(self, func, args, kwargs):
        tensor, rest = args[0], list(args[1:])
        device = kwargs.pop("device", None)
        if rest and not isinstance(rest[0], torch.dtype) and not isinstance(rest[0], torch.Tensor):
            device = rest.pop(0)
        if device is None:
            return func(tensor, *rest, **kwargs) if (rest or kwargs) else tensor
        out = func(tensor, *rest, **kwargs) if (rest or kwargs) else tensor.view_as(tensor)
        if _is_fake(device):
            return tag(out, device)
        if getattr(out, TAG, None):
            out = out.view_as(out)  # back on the CPU: a fresh view without the tag
        return out


def place(module: torch.nn.Module, device: str) -> None:
    """Tag the module's own parameters and buffers, and move its inputs to `device` before its forward."""
    for t in [*module.parameters(), *module.buffers()]:
        tag(t, device)

    def move(_module, args, kwargs):
        def to(x):
            return tag(x.view_as(x), device) if isinstance(x, torch.Tensor) else x

        return tree_map(to, args), tree_map(to, kwargs)

    module.register_forward_pre_hook(move, with_kwargs=True)

"""What an attack may not change: the model it was handed (parameters, buffers such as BatchNorm's statistics,
train/eval mode, hooks, parameter gradients) and the images and labels it was given.

The engine hands every attack copies of the batch and keeps its own, takes a `ModelState` of the predictor
before the attack and, after it, names whatever changed and puts it back, so the numbers come from the untouched
model and the untouched clean images (docs/EVALUATION.md, "What an attack cannot change").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as module_globals

# The hook tables of a module, and PyTorch's global ones (`nn.modules.module.register_module_forward_hook`, ...).
HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_TABLES = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                      "_global_backward_pre_hooks")


@dataclass
class ModelState:
    """A module's state as an attack must leave it: every parameter's and buffer's value, each submodule's mode,
    the hooks registered (on its modules and globally), and which parameters hold a gradient."""

    tensors: dict[str, torch.Tensor]
    buffers: set[str]
    modes: dict[str, bool]
    hooks: dict[str, set[int]]
    gradients: dict[str, torch.Tensor | None]

    @classmethod
    def of(cls, module: nn.Module) -> ModelState:
        parameters = dict(module.named_parameters(remove_duplicate=False))
        buffers = dict(module.named_buffers(remove_duplicate=False))
        return cls(tensors={name: value.detach().clone() for name, value in {**parameters, **buffers}.items()},
                   buffers=set(buffers),
                   modes={name: sub.training for name, sub in module.named_modules(remove_duplicate=False)},
                   hooks=_hooks(module),
                   gradients={name: None if value.grad is None else value.grad.detach().clone()
                              for name, value in parameters.items()})

    def changes(self, module: nn.Module) -> list[str]:
        """What differs now from this state, in the record's words: parameters, buffers, mode, hooks, gradients."""
        now = {**dict(module.named_parameters(remove_duplicate=False)),
               **dict(module.named_buffers(remove_duplicate=False))}
        changed_tensors = {name for name, value in self.tensors.items()
                           if name not in now or not _same(now[name], value)} | (set(now) - set(self.tensors))
        found = []
        if changed_tensors - self.buffers:
            found.append("parameters")
        if changed_tensors & self.buffers:
            found.append("buffers")
        if {name: sub.training for name, sub in module.named_modules(remove_duplicate=False)} != self.modes:
            found.append("mode")
        if _hooks(module) != self.hooks:
            found.append("hooks")
        if any(not _same_gradient(value.grad, self.gradients.get(name))
               for name, value in module.named_parameters(remove_duplicate=False)):
            found.append("gradients")
        return found

    def restore(self, module: nn.Module) -> None:
        """Put the module back as it was: values, modes, gradients, and no hook the attack left."""
        with torch.no_grad():
            for name, value in {**dict(module.named_parameters(remove_duplicate=False)),
                                **dict(module.named_buffers(remove_duplicate=False))}.items():
                if name in self.tensors and not _same(value, self.tensors[name]):
                    value.copy_(self.tensors[name])
        for name, sub in module.named_modules(remove_duplicate=False):
            if name in self.modes:
                sub.training = self.modes[name]
        for name, value in module.named_parameters(remove_duplicate=False):
            saved = self.gradients.get(name)
            value.grad = None if saved is None else saved.clone()
        for name, sub in module.named_modules(remove_duplicate=False):
            for table in HOOK_TABLES:
                hooks = getattr(sub, table)
                for key in set(hooks) - self.hooks.get(f"{name}.{table}", set()):
                    del hooks[key]
        for table in GLOBAL_HOOK_TABLES:
            hooks = getattr(module_globals, table)
            for key in set(hooks) - self.hooks.get(table, set()):
                del hooks[key]


def _hooks(module: nn.Module) -> dict[str, set[int]]:
    found = {f"{name}.{table}": set(getattr(sub, table)) for name, sub in module.named_modules(remove_duplicate=False)
             for table in HOOK_TABLES}
    return {**found, **{table: set(getattr(module_globals, table)) for table in GLOBAL_HOOK_TABLES}}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.to(a.device)))


def _same_gradient(now: torch.Tensor | None, before: torch.Tensor | None) -> bool:
    if now is None or before is None:
        return now is None and before is None
    return _same(now, before)


def batch_changed(given: torch.Tensor, kept: torch.Tensor) -> bool:
    """Whether the copy of a batch handed to an attack differs from the engine's own (NaN counts as a change)."""
    return given.shape != kept.shape or not bool(torch.equal(given, kept))

"""sfpn's RoIAlign and batched NMS inside torchvision's R-CNN heads: :func:`use_sfpn_ops`."""
from __future__ import annotations

import types

import torch
from torch import nn
from torchvision.models.detection import roi_heads as torchvision_roi_heads
from torchvision.models.detection import rpn as torchvision_rpn
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops import boxes as torchvision_box_ops

from ...ops import MultiLevelRoIAlign, batched_nms


#: ``torchvision.ops.MultiScaleRoIAlign`` on sfpn's ``multilevel_roi_align``: the same module as
#: :class:`sfpn.ops.MultiLevelRoIAlign` (same constructor, call, level rule and scale inference,
#: ``from_torchvision`` to convert a pooler), under torchvision's name.
MultiScaleRoIAlign = MultiLevelRoIAlign


class _BoxOpsWithSFPNNms(types.ModuleType):
    """``torchvision.ops.boxes`` as torchvision's RPN and RoI heads see it, with sfpn's batched NMS.

    A module object, so that ``torch.jit.script`` compiles the heads' ``box_ops.<function>`` calls
    through it as it does through torchvision's module (it compiles functions a module holds, not
    an arbitrary object's).
    """

    def __init__(self):
        super().__init__(f"{__name__}.box_ops", self.__doc__)
        self.batched_nms = batched_nms

    def __getattr__(self, name: str):
        return getattr(torchvision_box_ops, name)


# torchvision's RPN and RoI heads call ``box_ops.batched_nms`` through their module global
# ``box_ops``; pointing that global at the proxy swaps NMS for every torchvision detector in the
# process (there is no per-model hook for it) and nothing else. Counted, so that handles of
# several models can be removed in any order.
_NMS_MODULES = (torchvision_rpn, torchvision_roi_heads)
_NMS_CALLERS = (torchvision_rpn.RegionProposalNetwork, torchvision_roi_heads.RoIHeads)
_nms_patch_count = 0


def _set_box_ops(box_ops: types.ModuleType) -> None:
    for module in _NMS_MODULES:
        module.box_ops = box_ops
    # TorchScript keeps the compiled methods of each module class for the whole process and reuses
    # them for the next model it scripts, with the NMS they were compiled against. Forgetting the
    # heads' compiled types makes a model scripted from now on call the NMS set here.
    store = torch.jit._recursive.concrete_type_store.type_store
    for module_type in [t for t in store if issubclass(t, _NMS_CALLERS)]:
        del store[module_type]


def _patch_nms() -> None:
    global _nms_patch_count
    if _nms_patch_count == 0:
        _set_box_ops(_BoxOpsWithSFPNNms())
    _nms_patch_count += 1


def _unpatch_nms() -> None:
    global _nms_patch_count
    _nms_patch_count -= 1
    if _nms_patch_count == 0:
        _set_box_ops(torchvision_box_ops)


_POOLERS = ("box_roi_pool", "mask_roi_pool", "keypoint_roi_pool")


class SFPNOps:
    """What :func:`use_sfpn_ops` changed; ``remove()`` (or the end of a ``with`` block) restores it."""

    def __init__(self, model: nn.Module, roi_align: bool, nms: bool):
        self._model = model
        self._poolers = {}
        if roi_align:
            for name in _POOLERS:
                pooler = getattr(model.roi_heads, name, None)
                if isinstance(pooler, TorchvisionMultiScaleRoIAlign):
                    self._poolers[name] = pooler
                    setattr(model.roi_heads, name, MultiScaleRoIAlign.from_torchvision(pooler))
        self._nms = nms
        if nms:
            _patch_nms()

    def remove(self) -> None:
        for name, pooler in self._poolers.items():
            setattr(self._model.roi_heads, name, pooler)
        self._poolers = {}
        if self._nms:
            _unpatch_nms()
            self._nms = False

    def __enter__(self) -> SFPNOps:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def use_sfpn_ops(model: nn.Module, *, roi_align: bool = True, nms: bool = True) -> SFPNOps:
    """Runs a torchvision R-CNN on sfpn's ops.

    - ``roi_align``: the model's ``MultiScaleRoIAlign`` poolers (box, mask, keypoint) become
      :class:`MultiScaleRoIAlign` (this model only).
    - ``nms``: torchvision's RPN and RoI heads call sfpn's ``batched_nms``. This one is
      process-wide: torchvision reaches NMS through a module global, not through the model.

    Returns a handle: ``handle.remove()`` puts torchvision's poolers back into the model and, once
    every handle asking for it is removed, torchvision's NMS back into its heads; ``with
    use_sfpn_ops(model): ...`` does so at the end of the block.
    """
    if not isinstance(getattr(model, "roi_heads", None), torchvision_roi_heads.RoIHeads):
        raise TypeError(f"use_sfpn_ops needs a torchvision GeneralizedRCNN with RoIHeads, got {type(model).__name__}")
    return SFPNOps(model, roi_align, nms)

"""Scan: more timm families through the zoo's w8a8 path, to find what breaks (no peers).

One small member of each family not in the zoo (``zoo_models.TIMM``), random weights, 10 classes,
run through ``zoo_worker.run_model`` (quantize with the zoo's calibration, judge on its 96 held-out
inputs, export and verify in ONNX Runtime) in a forked child with a timeout. Fixed-size transformers
are built at ``img_size=64`` where timm allows it. The zoo keeps the families that found bugs; this
scan covers the breadth.

    PYTHONPATH=. .venv/bin/python benchmarks/timm_scan.py --jobs 2              # all
    PYTHONPATH=. .venv/bin/python benchmarks/timm_scan.py mixnet_s,pit_ti_224   # some
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

import benchmarks.zoo_models as zm  # noqa: E402
from benchmarks.scan_runner import cli  # noqa: E402

_CONV = """cs3darknet_focus_s dpn48b res2net50_14w_8s resnext26ts lambda_resnet26t gcresnet33ts eca_resnet33ts skresnet18
selecsls42b rexnet_100 tinynet_e mixnet_s fbnetv3_b hardcorenas_a mnasnet_small spnasnet_100 tf_efficientnet_lite0
mobileone_s0 repghostnet_050 ghostnetv2_100 inception_next_tiny crossvit_tiny_240 xcit_nano_12_p16_224 davit_tiny
focalnet_tiny_srf pvt_v2_b0 mvitv2_tiny sequencer2d_s efficientvit_m0 repvit_m0_9 shvit_s1 starnet_s050 rdnet_tiny
mambaout_femto hgnetv2_b0 ese_vovnet19b_dw nf_regnet_b0 regnetz_b16 legacy_xception gernet_s dla46_c tresnet_m
resnetv2_50d_gn seresnext26d_32x4d fasternet_t0""".split()  # run at 64x64 as built
_FIXED = """sebotnet33ts_256 botnet26t_256 efficientformerv2_s0 coatnet_nano_rw_224 coat_lite_tiny pit_ti_224
tnt_s_patch16_224 cait_xxs24_224 gcvit_xxtiny gmlp_ti16_224 resmlp_12_224 mixer_s16_224 visformer_tiny
eva02_tiny_patch14_224 vit_relpos_small_patch16_224 swinv2_cr_tiny_ns_224 levit_conv_128s""".split()  # built with img_size=64

MODELS: dict[str, tuple[int, dict]] = {  # name -> (input side, extra timm.create_model arguments)
    **{n: (zm.SMALL, {}) for n in _CONV},
    **{n: (64, {"img_size": 64}) for n in _FIXED},
    "efficientformer_l1": (224, {}),  # its attention's position bias is sized for 224
    "halonet26t": (256, {"img_size": 256}),  # halo blocks need a side divisible by 256/8 at every stage
}


def _register(names: list[str]) -> None:
    """Make the scan's models visible to ``zoo_models.zoo()`` as ``timm/scan_<name>`` (the forked children inherit it)."""
    for n in names:
        side, kw = MODELS[n]
        zm.SCANNED.append(zm.Entry(f"timm/scan_{n}", "timm", zm._timm(n, side, **kw), "cls", f"{zm.BATCH}x3x{side}x{side}", False))


def main(argv=None) -> int:
    return cli(argv, __doc__.split("\n\n")[0], list(MODELS), _register, "timm/scan_", 600.0)


if __name__ == "__main__":
    sys.exit(main())

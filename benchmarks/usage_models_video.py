"""Thirteenth round of user-style models for ``usage_scan.py`` (2026-12-07, eighth session): video models and
``torchvision.ops`` building blocks in ``forward``, written as their reference repositories write them. TSM's temporal
shift (``zeros_like`` + slice assignment over ``view(n_batch, n_segment, ...)``) inside a TSN wrapper with segment
consensus, torchvision's R(2+1)D ``Conv2Plus1D`` / ``BasicBlock``, an X3D block (depthwise Conv3d, 3-D SE, pytorchvideo's
``SwishFunction`` autograd function, Hardswish head), SlowFast's ``index_select`` pathway packing and time-strided
fast-to-slow lateral fused by ``cat``, a frame-wise 2-D CNN with temporal max/mean pooling, torchvision's ConvNeXt
``CNBlock`` (``Permute``, ``StochasticDepth``, ``ops.MLP``), ``Conv3dNormActivation`` / ``Conv2dNormActivation`` /
``SqueezeExcitation`` / ``FrozenBatchNorm2d``, ``BackboneWithFPN`` over a frozen-BN ResNet (OrderedDict outputs),
``FeaturePyramidNetwork`` + ``MultiScaleRoIAlign`` with per-image box lists, ``roi_align`` on a rois tensor built with
``repeat_interleave``, R-FCN's ``PSRoIAlign``, DETR's matching costs (``box_convert``, ``generalized_box_iou``,
``box_iou``), ``batched_nms`` post-processing (a data-dependent number of detections), MViT pooling attention (Conv3d
pooling of q/k/v), Video Swin's 3-D shifted windows (``torch.roll`` over T, H, W and a ``cnt`` attention mask),
TimeSformer's divided space-time attention (reshape-only rearranges, a repeated cls token) and CLIP4Clip's temporal
transformer with masked mean pooling.

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import ops
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

from benchmarks.usage_models_research import _images, _trained_norms


def _video(n: int, g: torch.Generator, t: int = 4, side: int = 16) -> tuple:
    return (torch.randn(n, 3, t, side, side, generator=g),)


# --- TSM (mit-han-lab/temporal-shift-module ops/temporal_shift.py, ops/models.py) ---------------------------------
class TemporalShift(nn.Module):
    def __init__(self, net, n_segment=3, n_div=8, inplace=False):
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div
        self.inplace = inplace

    def forward(self, x):
        x = self.shift(x, self.n_segment, fold_div=self.fold_div, inplace=self.inplace)
        return self.net(x)

    @staticmethod
    def shift(x, n_segment, fold_div=3, inplace=False):
        nt, c, h, w = x.size()
        n_batch = nt // n_segment
        x = x.view(n_batch, n_segment, c, h, w)
        fold = c // fold_div
        if inplace:
            raise NotImplementedError
        else:
            out = torch.zeros_like(x)
            out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
            out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right
            out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift
        return out.view(nt, c, h, w)


class TSMBlock(nn.Module):
    def __init__(self, c, n_segment):
        super().__init__()
        self.conv1 = TemporalShift(nn.Conv2d(c, c, 3, padding=1, bias=False), n_segment=n_segment, n_div=8)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class TSN(nn.Module):
    """TSN with a TSM base: input ``(n, T * 3, H, W)``, ``input.view((-1, sample_len) + input.size()[-2:])``, per-frame
    logits, average consensus."""

    def __init__(self, num_class=5, num_segments=4):
        super().__init__()
        self.num_segments = num_segments
        self.base_model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                        TSMBlock(16, num_segments), TSMBlock(16, num_segments), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Dropout(0.5))
        self.new_fc = nn.Linear(16, num_class)

    def forward(self, input):
        sample_len = 3
        base_out = self.base_model(input.view((-1, sample_len) + input.size()[-2:]))
        base_out = self.new_fc(base_out)
        base_out = base_out.view((-1, self.num_segments) + base_out.size()[1:])
        output = base_out.mean(dim=1, keepdim=True)  # ConsensusModule('avg')
        return output.squeeze(1)


# --- R(2+1)D (torchvision.models.video.resnet) ----------------------------------------------------------------
class R2Plus1D(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 12, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False), nn.BatchNorm3d(12),
                                  nn.ReLU(inplace=True), nn.Conv3d(12, 16, (3, 1, 1), padding=(1, 0, 0), bias=False),
                                  nn.BatchNorm3d(16), nn.ReLU(inplace=True))
        down = nn.Sequential(nn.Conv3d(16, 32, kernel_size=1, stride=2, bias=False), nn.BatchNorm3d(32))
        self.layer1 = BasicBlock(16, 16, Conv2Plus1D)
        self.layer2 = BasicBlock(16, 32, Conv2Plus1D, stride=2, downsample=down)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.fc(x)


# --- X3D (facebookresearch/pytorchvideo layers/swish.py, models/x3d.py) -----------------------------------------
class SwishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        result = x * torch.sigmoid(x)
        ctx.save_for_backward(x)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        x = ctx.saved_tensors[0]
        sigmoid_x = torch.sigmoid(x)
        return grad_output * (sigmoid_x * (1 + x * (1 - sigmoid_x)))


class Swish(nn.Module):
    def forward(self, x):
        return SwishFunction.apply(x)


class SqueezeExcitation3d(nn.Module):
    def __init__(self, num_channels, num_channels_reduced):
        super().__init__()
        self.block = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(num_channels, num_channels_reduced, 1, bias=True), nn.ReLU(),
                                   nn.Conv3d(num_channels_reduced, num_channels, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x)


class X3DBottleneck(nn.Module):
    def __init__(self, dim_in, dim_inner, dim_out, stride, use_se):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, (3, 3, 3), stride=(1, stride, stride), padding=1, groups=dim_inner, bias=False)
        self.norm_b = nn.Sequential(nn.BatchNorm3d(dim_inner), SqueezeExcitation3d(dim_inner, 8) if use_se else nn.Identity())
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)
        self.branch1 = (nn.Sequential(nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(dim_out))
                        if stride != 1 or dim_in != dim_out else None)

    def forward(self, x):
        y = self.norm_c(self.conv_c(self.act_b(self.norm_b(self.conv_b(self.act_a(self.norm_a(self.conv_a(x))))))))
        shortcut = x if self.branch1 is None else self.branch1(x)
        return F.relu(shortcut + y)


class X3D(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 12, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
                                  nn.Conv3d(12, 12, (5, 1, 1), padding=(2, 0, 0), groups=12, bias=False), nn.BatchNorm3d(12), nn.ReLU())
        self.blocks = nn.Sequential(X3DBottleneck(12, 27, 24, 2, True), X3DBottleneck(24, 54, 24, 1, False))
        self.head_conv = nn.Sequential(nn.Conv3d(24, 54, 1, bias=False), nn.BatchNorm3d(54), nn.ReLU())
        self.pool = nn.AvgPool3d((4, 4, 4), stride=1)
        self.pre_logits = nn.Sequential(nn.Conv3d(54, 64, 1, bias=False), nn.Hardswish())
        self.proj = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pre_logits(self.pool(self.head_conv(self.blocks(self.stem(x)))))
        x = x.permute((0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
        x = self.proj(x)
        x = x.mean([1, 2, 3])
        return x.view(x.shape[0], -1)


# --- SlowFast (pytorchvideo transforms PackPathway, models/slowfast.py FuseFastToSlow) ------------------------------
class FuseFastToSlow(nn.Module):
    def __init__(self, dim_in, fusion_conv_channel_ratio=2, fusion_kernel=5, alpha=4):
        super().__init__()
        self.conv_f2s = nn.Conv3d(dim_in, dim_in * fusion_conv_channel_ratio, kernel_size=[fusion_kernel, 1, 1],
                                  stride=[alpha, 1, 1], padding=[fusion_kernel // 2, 0, 0], bias=False)
        self.bn = nn.BatchNorm3d(dim_in * fusion_conv_channel_ratio)
        self.relu = nn.ReLU(True)

    def forward(self, x):
        x_s = x[0]
        x_f = x[1]
        fuse = self.relu(self.bn(self.conv_f2s(x_f)))
        x_s_fuse = torch.cat([x_s, fuse], 1)
        return [x_s_fuse, x_f]


class SlowFast(nn.Module):
    def __init__(self, alpha=4, num_classes=5):
        super().__init__()
        self.alpha = alpha
        self.slow_stem = nn.Sequential(nn.Conv3d(3, 16, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False), nn.BatchNorm3d(16), nn.ReLU())
        self.fast_stem = nn.Sequential(nn.Conv3d(3, 4, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False), nn.BatchNorm3d(4), nn.ReLU())
        self.fuse = FuseFastToSlow(4, alpha=alpha)
        self.slow_res = nn.Sequential(nn.Conv3d(24, 24, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(24), nn.ReLU())
        self.fast_res = nn.Sequential(nn.Conv3d(4, 4, (3, 3, 3), padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU())
        self.proj = nn.Linear(28, num_classes)

    def pack_pathway(self, frames):
        fast_pathway = frames
        slow_pathway = torch.index_select(frames, 2, torch.linspace(0, frames.shape[2] - 1, frames.shape[2] // self.alpha).long())
        return [slow_pathway, fast_pathway]

    def forward(self, frames):
        x = self.pack_pathway(frames)
        x = [self.slow_stem(x[0]), self.fast_stem(x[1])]
        x = self.fuse(x)
        x = [self.slow_res(x[0]), self.fast_res(x[1])]
        pooled = [F.adaptive_avg_pool3d(p, 1) for p in x]
        x = torch.cat(pooled, 1).flatten(1)
        return self.proj(x)


# --- frame-wise 2-D CNN + temporal pooling (the "(b t) c h w" pattern without einops) ------------------------------
class FrameCNNTemporalPool(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.temporal = nn.Conv1d(32, 32, 3, padding=1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, video):
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        feats = self.cnn(frames).flatten(1).view(b, t, -1)
        feats = F.relu(self.temporal(feats.transpose(1, 2))).transpose(1, 2)
        max_pooled = torch.max(feats, dim=1)[0]
        mean_pooled = feats.mean(dim=1)
        return self.fc(torch.cat([max_pooled, mean_pooled], dim=-1))


# --- torchvision ConvNeXt block (CNBlock: Permute, LayerNorm, Linear, StochasticDepth) + ops.MLP head -------------
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        from torchvision.models.convnext import CNBlock

        norm = partial(LayerNorm2d, eps=1e-6)
        self.stem = ops.Conv2dNormActivation(3, 16, kernel_size=4, stride=4, padding=0, norm_layer=norm, activation_layer=None, bias=True)
        self.blocks = nn.Sequential(CNBlock(16, 0.5, 0.1), CNBlock(16, 0.5, 0.2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(norm(16), nn.Flatten(1), ops.MLP(16, [32, num_classes], activation_layer=nn.GELU, dropout=0.1))
        with torch.no_grad():
            for blk in self.blocks:
                blk.layer_scale.uniform_(0.3, 0.8)

    def forward(self, x):
        return self.head(self.avgpool(self.blocks(self.stem(x))))


# --- torchvision.ops Conv3dNormActivation stem, Conv2dNormActivation, SqueezeExcitation, FrozenBatchNorm2d --------
class VideoOpsBlocks(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem3d = ops.Conv3dNormActivation(3, 16, kernel_size=(3, 3, 3), stride=(1, 2, 2), activation_layer=nn.SiLU)
        self.conv = ops.Conv2dNormActivation(16, 32, kernel_size=3, norm_layer=ops.FrozenBatchNorm2d, activation_layer=nn.Hardswish)
        self.se = ops.SqueezeExcitation(32, 8, scale_activation=nn.Hardsigmoid)
        self.dw = ops.Conv2dNormActivation(32, 32, kernel_size=3, stride=2, groups=32, activation_layer=nn.ReLU6)
        self.sd = ops.StochasticDepth(0.2, "row")
        self.fc = nn.Linear(32, num_classes)
        g = torch.Generator().manual_seed(7)
        fbn = self.conv[1]
        with torch.no_grad():
            fbn.weight.copy_(torch.rand(32, generator=g) + 0.5)
            fbn.bias.copy_(torch.randn(32, generator=g) * 0.1)
            fbn.running_mean.copy_(torch.randn(32, generator=g) * 0.3)
            fbn.running_var.copy_(torch.rand(32, generator=g) + 0.5)

    def forward(self, video):
        x = self.stem3d(video).mean(dim=2)  # temporal average after the 3-D stem
        x = self.conv(x)
        x = x + self.sd(self.se(x))
        x = self.dw(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- torchvision detection: BackboneWithFPN over a FrozenBatchNorm2d ResNet-18 -----------------------------------
def _fpn_frozen_bn():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    body = torchvision.models.resnet18(norm_layer=ops.FrozenBatchNorm2d)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, ops.FrozenBatchNorm2d):
                c = m.weight.numel()
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 32)


# --- FeaturePyramidNetwork + MultiScaleRoIAlign (Faster R-CNN's box branch front) ------------------------------
class FPNRoIHead(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.c2 = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fpn = ops.FeaturePyramidNetwork([16, 32, 64], 24)
        self.box_roi_pool = ops.MultiScaleRoIAlign(["feat0", "feat1", "feat2"], output_size=4, sampling_ratio=2)
        self.box_head = nn.Sequential(nn.Flatten(1), nn.Linear(24 * 16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.cls_score = nn.Linear(64, num_classes)
        self.bbox_pred = nn.Linear(64, num_classes * 4)

    def forward(self, images, boxes):
        c2 = self.c2(images)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        features = self.fpn(OrderedDict([("feat0", c2), ("feat1", c3), ("feat2", c4)]))
        image_shapes = [tuple(img.shape[-2:]) for img in images]
        proposals = list(boxes.unbind(0))
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        return self.cls_score(box_features), self.bbox_pred(box_features)


def _images_boxes(n: int, g: torch.Generator, side: int = 32, k: int = 3) -> tuple:
    xy = torch.rand(n, k, 2, generator=g) * side * 0.6
    wh = torch.rand(n, k, 2, generator=g) * side * 0.3 + 4
    return _images(n, g, side) + (torch.cat([xy, xy + wh], -1),)


# --- roi_align on a rois tensor (convert_boxes_to_roi_format), R-FCN's PSRoIAlign ---------------------------------
class RoIAlignRois(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32 * 4 * 4, 6)

    def forward(self, images, boxes):
        feats = self.backbone(images)
        n, k = boxes.shape[:2]
        idx = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None]
        rois = torch.cat([idx, boxes.reshape(-1, 4)], dim=1)
        pooled = ops.roi_align(feats, rois, output_size=(4, 4), spatial_scale=0.25, sampling_ratio=2, aligned=True)
        return self.fc(pooled.flatten(1)).view(n, k, -1)


class RFCNHead(nn.Module):
    def __init__(self, num_classes=4, k=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.cls_conv = nn.Conv2d(32, k * k * num_classes, 1)
        self.ps_roi = ops.PSRoIAlign(output_size=k, spatial_scale=0.5, sampling_ratio=2)

    def forward(self, images, boxes):
        feats = self.backbone(images)
        score_maps = self.cls_conv(feats)
        pooled = self.ps_roi(score_maps, list(boxes.unbind(0)))  # (n * k_boxes, num_classes, k, k)
        return pooled.mean(dim=(2, 3)).softmax(-1)


# --- DETR matcher costs (box_convert, generalized_box_iou, box_iou) ----------------------------------------------
class DETRBoxCosts(nn.Module):
    def __init__(self, num_queries=6, d=32):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, d, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.query_embed = nn.Embedding(num_queries, d)
        self.bbox_embed = ops.MLP(d, [d, d, 4])
        self.class_embed = nn.Linear(d, 3)

    def forward(self, images, tgt_boxes):
        h = self.backbone(images)[:, None] + self.query_embed.weight[None]
        pred_boxes = self.bbox_embed(h).sigmoid()  # (n, q, 4) cxcywh in [0, 1]
        logits = self.class_embed(h)
        out_bbox = pred_boxes.flatten(0, 1)
        tgt = tgt_boxes.flatten(0, 1)
        cost_bbox = torch.cdist(out_bbox, ops.box_convert(tgt, "xyxy", "cxcywh"), p=1)
        cost_giou = -ops.generalized_box_iou(ops.box_convert(out_bbox, "cxcywh", "xyxy"), tgt)
        iou = ops.box_iou(ops.box_convert(out_bbox, "cxcywh", "xyxy"), tgt)
        cost_class = -logits.flatten(0, 1).softmax(-1)[:, :1]
        C = 5 * cost_bbox + cost_class + 2 * cost_giou
        return pred_boxes, C, iou.max(dim=1).values


def _images_norm_boxes(n: int, g: torch.Generator) -> tuple:
    xy = torch.rand(n, 2, 2, generator=g) * 0.5
    return _images(n, g, 32) + (torch.cat([xy, xy + 0.1 + torch.rand(n, 2, 2, generator=g) * 0.4], -1),)


# --- dense head + batched_nms post-processing (torchvision RetinaNet/FCOS postprocess_detections style) ----------
class DenseDetector(nn.Module):
    def __init__(self, num_classes=3, score_thresh=0.52, nms_thresh=0.5, detections_per_img=20):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(16, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(16, 4, 3, padding=1)
        self.num_classes, self.score_thresh, self.nms_thresh, self.detections_per_img = num_classes, score_thresh, nms_thresh, detections_per_img
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("centers", torch.stack([xs, ys], -1).reshape(-1, 2) * 4 + 2)

    def forward(self, images):
        feats = self.body(images)
        n = feats.shape[0]
        scores = self.cls_logits(feats).flatten(2).transpose(1, 2).sigmoid()  # (n, HW, C)
        ltrb = F.relu(self.bbox_reg(feats)).flatten(2).transpose(1, 2) * 4 + 1
        boxes = torch.cat([self.centers - ltrb[..., :2], self.centers + ltrb[..., 2:]], -1)
        boxes = ops.clip_boxes_to_image(boxes, images.shape[-2:])
        image_idx = torch.arange(n)[:, None, None].expand(n, boxes.shape[1], self.num_classes)
        labels = torch.arange(self.num_classes)[None, None].expand_as(image_idx)
        boxes = boxes[:, :, None].expand(-1, -1, self.num_classes, -1).reshape(-1, 4)
        scores, labels, image_idx = scores.reshape(-1), labels.reshape(-1), image_idx.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels, image_idx = boxes[keep], scores[keep], labels[keep], image_idx[keep]
        keep = ops.remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels, image_idx = boxes[keep], scores[keep], labels[keep], image_idx[keep]
        keep = ops.batched_nms(boxes, scores, image_idx * self.num_classes + labels, self.nms_thresh)
        keep = keep[: self.detections_per_img * n]
        return boxes[keep], scores[keep], labels[keep], image_idx[keep]


# --- MViT pooling attention (facebookresearch/SlowFast slowfast/models/attention.py) -----------------------------
def attention_pool(tensor, pool, thw_shape, has_cls_embed=True, norm=None):
    if pool is None:
        return tensor, thw_shape
    tensor_dim = tensor.ndim
    if tensor_dim == 4:
        pass
    elif tensor_dim == 3:
        tensor = tensor.unsqueeze(1)
    else:
        raise NotImplementedError(f"Unsupported input dimension {tensor.shape}")
    if has_cls_embed:
        cls_tok, tensor = tensor[:, :, :1, :], tensor[:, :, 1:, :]
    B, N, L, C = tensor.shape
    T, H, W = thw_shape
    tensor = tensor.reshape(B * N, T, H, W, C).permute(0, 4, 1, 2, 3).contiguous()
    tensor = pool(tensor)
    thw_shape = [tensor.shape[2], tensor.shape[3], tensor.shape[4]]
    L_pooled = tensor.shape[2] * tensor.shape[3] * tensor.shape[4]
    tensor = tensor.reshape(B, N, C, L_pooled).transpose(2, 3)
    if has_cls_embed:
        tensor = torch.cat((cls_tok, tensor), dim=2)
    if norm is not None:
        tensor = norm(tensor)
    if tensor_dim == 3:
        tensor = tensor.squeeze(1)
    return tensor, thw_shape


class MultiScaleAttention(nn.Module):
    def __init__(self, dim, num_heads=2, kernel_q=(3, 3, 3), kernel_kv=(3, 3, 3), stride_q=(1, 1, 1), stride_kv=(1, 2, 2)):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        padding_q = [int(q // 2) for q in kernel_q]
        padding_kv = [int(kv // 2) for kv in kernel_kv]
        self.pool_q = nn.Conv3d(head_dim, head_dim, kernel_q, stride=stride_q, padding=padding_q, groups=head_dim, bias=False)
        self.norm_q = nn.LayerNorm(head_dim)
        self.pool_k = nn.Conv3d(head_dim, head_dim, kernel_kv, stride=stride_kv, padding=padding_kv, groups=head_dim, bias=False)
        self.norm_k = nn.LayerNorm(head_dim)
        self.pool_v = nn.Conv3d(head_dim, head_dim, kernel_kv, stride=stride_kv, padding=padding_kv, groups=head_dim, bias=False)
        self.norm_v = nn.LayerNorm(head_dim)

    def forward(self, x, thw_shape):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, q_shape = attention_pool(q, self.pool_q, thw_shape, norm=self.norm_q)
        k, k_shape = attention_pool(k, self.pool_k, thw_shape, norm=self.norm_k)
        v, v_shape = attention_pool(v, self.pool_v, thw_shape, norm=self.norm_v)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = attn @ v
        x = x + q  # residual pooling (MViTv2)
        x = x.transpose(1, 2).reshape(B, -1, q.shape[-1] * self.num_heads)
        return self.proj(x), q_shape


class TinyMViT(nn.Module):
    def __init__(self, dim=32, num_classes=5):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, (3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + 2 * 4 * 4, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiScaleAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ops.MLP(dim, [dim * 2, dim], activation_layer=nn.GELU)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        thw = list(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x_block, thw = self.attn(self.norm1(x), thw)
        x = x + x_block
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


# --- Video Swin (SwinTransformer/Video-Swin-Transformer mmaction/models/backbones/swin_transformer.py) -------------
def window_partition(x, window_size):
    B, D, H, W, C = x.shape
    x = x.view(B, D // window_size[0], window_size[0], H // window_size[1], window_size[1], W // window_size[2], window_size[2], C)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, window_size[0] * window_size[1] * window_size[2], C)
    return windows


def window_reverse(windows, window_size, B, D, H, W):
    x = windows.view(B, D // window_size[0], H // window_size[1], W // window_size[2], window_size[0], window_size[1], window_size[2], -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(B, D, H, W, -1)
    return x


def compute_mask(D, H, W, window_size, shift_size, device):
    img_mask = torch.zeros((1, D, H, W, 1), device=device)
    cnt = 0
    for d in slice(-window_size[0]), slice(-window_size[0], -shift_size[0]), slice(-shift_size[0], None):
        for h in slice(-window_size[1]), slice(-window_size[1], -shift_size[1]), slice(-shift_size[1], None):
            for w in slice(-window_size[2]), slice(-window_size[2], -shift_size[2]), slice(-shift_size[2], None):
                img_mask[:, d, h, w, :] = cnt
                cnt += 1
    mask_windows = window_partition(img_mask, window_size)
    mask_windows = mask_windows.squeeze(-1)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
    return attn_mask


class WindowAttention3D(nn.Module):
    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1), num_heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]), torch.arange(window_size[1]), torch.arange(window_size[2]), indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size[0] - 1
        relative_coords[:, :, 1] += window_size[1] - 1
        relative_coords[:, :, 2] += window_size[2] - 1
        relative_coords[:, :, 0] *= (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        relative_coords[:, :, 1] *= 2 * window_size[2] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        relative_position_bias = self.relative_position_bias_table[self.relative_position_index[:N, :N].reshape(-1)].reshape(N, N, -1)
        attn = attn + relative_position_bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinBlock3D(nn.Module):
    def __init__(self, dim, num_heads, window_size=(2, 4, 4), shift_size=(0, 0, 0)):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward_part1(self, x, mask_matrix):
        B, D, H, W, C = x.shape
        window_size, shift_size = self.window_size, self.shift_size
        x = self.norm1(x)
        pad_d1 = (window_size[0] - D % window_size[0]) % window_size[0]
        pad_b = (window_size[1] - H % window_size[1]) % window_size[1]
        pad_r = (window_size[2] - W % window_size[2]) % window_size[2]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d1))
        _, Dp, Hp, Wp, _ = x.shape
        if any(i > 0 for i in shift_size):
            shifted_x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1], -shift_size[2]), dims=(1, 2, 3))
            attn_mask = mask_matrix
        else:
            shifted_x = x
            attn_mask = None
        x_windows = window_partition(shifted_x, window_size)
        attn_windows = self.attn(x_windows, mask=attn_mask)
        attn_windows = attn_windows.view(-1, *(window_size + (C,)))
        shifted_x = window_reverse(attn_windows, window_size, B, Dp, Hp, Wp)
        if any(i > 0 for i in shift_size):
            x = torch.roll(shifted_x, shifts=(shift_size[0], shift_size[1], shift_size[2]), dims=(1, 2, 3))
        else:
            x = shifted_x
        return x[:, :D, :H, :W, :].contiguous()

    def forward(self, x, mask_matrix):
        x = x + self.forward_part1(x, mask_matrix)
        return x + self.mlp(self.norm2(x))


class TinyVideoSwin(nn.Module):
    def __init__(self, dim=32, num_classes=5, window_size=(2, 4, 4)):
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(i // 2 for i in window_size)
        self.patch_embed = nn.Conv3d(3, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.blocks = nn.ModuleList([SwinBlock3D(dim, 2, window_size, (0, 0, 0)), SwinBlock3D(dim, 2, window_size, self.shift_size)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        B, C, D, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1)  # b c d h w -> b d h w c
        Dp = int(torch.ceil(torch.tensor(D / self.window_size[0]))) * self.window_size[0]
        Hp = int(torch.ceil(torch.tensor(H / self.window_size[1]))) * self.window_size[1]
        Wp = int(torch.ceil(torch.tensor(W / self.window_size[2]))) * self.window_size[2]
        attn_mask = compute_mask(Dp, Hp, Wp, self.window_size, self.shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = self.norm(x)
        return self.head(x.mean(dim=(1, 2, 3)))


# --- TimeSformer divided space-time attention (facebookresearch/TimeSformer vit.py, rearranges by reshape) --------
class Attention(nn.Module):
    def __init__(self, dim, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class DividedBlock(nn.Module):
    def __init__(self, dim, num_heads=2):
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, B, T, W):
        num_spatial_tokens = (x.size(1) - 1) // T
        H = num_spatial_tokens // W
        # temporal: 'b (h w t) m -> (b h w) t m'
        xt = x[:, 1:, :]
        xt = xt.reshape(B, H * W, T, -1).reshape(B * H * W, T, -1)
        res_temporal = self.temporal_attn(self.temporal_norm1(xt))
        res_temporal = self.temporal_fc(res_temporal.reshape(B, H * W * T, -1))  # '(b h w) t m -> b (h w t) m'
        xt = x[:, 1:, :] + res_temporal
        # spatial: cls token repeated over T, 'b (h w t) m -> (b t) (h w) m'
        init_cls_token = x[:, 0, :].unsqueeze(1)
        cls_token = init_cls_token.repeat(1, T, 1)
        cls_token = cls_token.reshape(B * T, -1).unsqueeze(1)
        xs = xt.reshape(B, H * W, T, -1).permute(0, 2, 1, 3).reshape(B * T, H * W, -1)
        xs = torch.cat((cls_token, xs), 1)
        res_spatial = self.attn(self.norm1(xs))
        cls_token = res_spatial[:, 0, :].reshape(B, T, -1)
        cls_token = torch.mean(cls_token, 1, True)  # averaging for every frame
        res_spatial = res_spatial[:, 1:, :].reshape(B, T, H * W, -1).permute(0, 2, 1, 3).reshape(B, H * W * T, -1)
        x = torch.cat((init_cls_token, xt), 1) + torch.cat((cls_token, res_spatial), 1)
        return x + self.mlp(self.norm2(x))


class TinyTimeSformer(nn.Module):
    def __init__(self, dim=32, num_frames=4, num_classes=5):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + 16, dim) * 0.02)
        self.time_embed = nn.Parameter(torch.randn(1, num_frames, dim) * 0.02)
        self.blocks = nn.ModuleList([DividedBlock(dim), DividedBlock(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # 'b c t h w -> (b t) c h w'
        x = self.proj(x)
        W = x.size(-1)
        x = x.flatten(2).transpose(1, 2)
        cls_tokens = self.cls_token.expand(x.size(0), -1, -1)
        x = torch.cat((cls_tokens, x), dim=1) + self.pos_embed
        cls_tokens = x[:B, 0, :].unsqueeze(1)
        x = x[:, 1:]
        x = x.reshape(B, T, -1, x.shape[-1]).permute(0, 2, 1, 3).reshape(B * x.shape[1], T, -1)  # '(b t) n m -> (b n) t m'
        x = x + self.time_embed
        x = x.reshape(B, -1, T, x.shape[-1]).reshape(B, -1, x.shape[-1])  # '(b n) t m -> b (n t) m'
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x, B, T, W)
        return self.head(self.norm(x)[:, 0])


# --- CLIP4Clip seqTransf (ArrowLuo/CLIP4Clip modules/modeling.py, module_cross.py) -------------------------------
class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = nn.LayerNorm(d_model)
        self.n_head = n_head

    def attention(self, x, attn_mask):
        attn_mask_ = attn_mask.repeat_interleave(self.n_head, dim=0)
        return self.attn(x, x, x, need_weights=False, attn_mask=attn_mask_)[0]

    def forward(self, para_tuple):
        x, attn_mask = para_tuple
        x = x + self.attention(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return (x, attn_mask)


class CLIP4Clip(nn.Module):
    def __init__(self, dim=32, max_frames=6):
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.LayerNorm(dim),
                                    nn.Linear(dim, dim, bias=False))
        self.frame_position_embeddings = nn.Embedding(max_frames, dim)
        self.transformerClip = nn.Sequential(*[ResidualAttentionBlock(dim, 4) for _ in range(2)])
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def get_visual_output(self, video, video_mask):
        b, t = video_mask.shape
        video = video.view(b * t, *video.shape[-3:])
        visual_hidden = self.visual(video)
        return visual_hidden.view(b, -1, visual_hidden.size(-1))

    def _mean_pooling_for_similarity_visual(self, visual_output, video_mask):
        video_mask_un = video_mask.to(dtype=torch.float).unsqueeze(-1)
        visual_output = visual_output * video_mask_un
        video_mask_un_sum = torch.sum(video_mask_un, dim=1, dtype=torch.float)
        video_mask_un_sum[video_mask_un_sum == 0.] = 1.
        return torch.sum(visual_output, dim=1) / video_mask_un_sum

    def forward(self, text_feat, video, video_mask):
        visual_output = self.get_visual_output(video, video_mask)
        visual_output_original = visual_output
        seq_length = visual_output.size(1)
        position_ids = torch.arange(seq_length, dtype=torch.long, device=visual_output.device)
        position_ids = position_ids.unsqueeze(0).expand(visual_output.size(0), -1)
        visual_output = visual_output + self.frame_position_embeddings(position_ids)
        extended_video_mask = (1.0 - video_mask.unsqueeze(1)) * -1000000.0
        extended_video_mask = extended_video_mask.expand(-1, video_mask.size(1), -1)
        visual_output = visual_output.permute(1, 0, 2)  # NLD -> LND
        visual_output = self.transformerClip((visual_output, extended_video_mask))[0]
        visual_output = visual_output.permute(1, 0, 2)  # LND -> NLD
        visual_output = visual_output + visual_output_original
        visual_output = visual_output / visual_output.norm(dim=-1, keepdim=True)
        video_out = self._mean_pooling_for_similarity_visual(visual_output, video_mask)
        video_out = video_out / video_out.norm(dim=-1, keepdim=True)
        text_feat = text_feat / text_feat.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * torch.matmul(text_feat, video_out.t())


def _clip4clip_inputs(n: int, g: torch.Generator, t: int = 6) -> tuple:
    lengths = torch.randint(2, t + 1, (n, 1), generator=g)
    mask = (torch.arange(t)[None] < lengths).long()
    return torch.randn(n, 32, generator=g), torch.randn(n, t, 3, 16, 16, generator=g), mask


CASES = {
    "tsm_shift": ("TSM in a TSN: input.view((-1, 3) + size()[-2:]), zeros_like + slice assignment temporal shift over "
                  "view(n_batch, n_segment, c, h, w), average consensus", lambda: (
                      _trained_norms(TSN()), lambda n, g: (torch.randn(n, 4 * 3, 16, 16, generator=g),))),
    "r2plus1d_block": ("torchvision R(2+1)D: Conv2Plus1D (1,3,3) then (3,1,1) in BasicBlock, strided 3-D downsample, "
                       "AdaptiveAvgPool3d", lambda: (_trained_norms(R2Plus1D()), _video)),
    "x3d_se_swish": ("X3D: depthwise Conv3d, 3-D SE, pytorchvideo SwishFunction (autograd.Function), AvgPool3d head, "
                     "Hardswish, permute to channels-last Linear + mean", lambda: (_trained_norms(X3D()), _video)),
    "slowfast_lateral": ("SlowFast: index_select(linspace(...).long()) pathway packing, time-strided Conv3d fast-to-slow "
                         "fused by cat, list of pathways", lambda: (_trained_norms(SlowFast()), lambda n, g: _video(n, g, t=8))),
    "frame_cnn_temporal_pool": ("(b c t h w) -> (b t) c h w by permute/reshape, 2-D CNN, view(b, t, -1), Conv1d over time, "
                                "torch.max(dim=1)[0] and mean pooling", lambda: (_trained_norms(FrameCNNTemporalPool()), _video)),
    "tv_convnext_cnblock": ("torchvision CNBlock (Permute, LayerNorm, Linear, layer_scale, StochasticDepth in eval), "
                            "Conv2dNormActivation stem with LayerNorm2d, ops.MLP head", lambda: (TinyConvNeXt(), lambda n, g: _images(n, g, 32))),
    "tv_ops_norm_act_se": ("torchvision.ops: Conv3dNormActivation(SiLU) stem, mean over T, Conv2dNormActivation with "
                           "FrozenBatchNorm2d + Hardswish, SqueezeExcitation(Hardsigmoid), StochasticDepth row",
                           lambda: (_trained_norms(VideoOpsBlocks()), _video)),
    "fpn_frozen_bn": ("torchvision BackboneWithFPN: IntermediateLayerGetter over a FrozenBatchNorm2d ResNet-18, "
                      "FeaturePyramidNetwork + LastLevelMaxPool, OrderedDict output", lambda: (
                          _fpn_frozen_bn(), lambda n, g: _images(n, g, 32))),
    "fpn_multiscale_roialign": ("FeaturePyramidNetwork on an OrderedDict, MultiScaleRoIAlign with list(boxes.unbind(0)) "
                                "and image_shapes, TwoMLPHead, (cls_score, bbox_pred)", lambda: (FPNRoIHead(), _images_boxes)),
    "roi_align_rois": ("ops.roi_align on a (K, 5) rois tensor: arange(n).repeat_interleave(k) batch column cat boxes, "
                       "aligned=True", lambda: (RoIAlignRois(), _images_boxes)),
    "rfcn_ps_roi_align": ("R-FCN: position-sensitive score maps, ops.PSRoIAlign over a list of per-image boxes, vote by mean",
                          lambda: (RFCNHead(), _images_boxes)),
    "detr_box_costs": ("DETR matcher costs: ops.MLP box head, box_convert, cdist p=1, generalized_box_iou, box_iou; "
                       "(pred_boxes, C, best iou)", lambda: (DETRBoxCosts(), _images_norm_boxes)),
    "batched_nms_postprocess": ("dense detector post-processing: clip_boxes_to_image, score threshold by where, "
                                "remove_small_boxes, batched_nms with image_idx * C + labels offsets, top detections "
                                "(data-dependent length)", lambda: (DenseDetector(), lambda n, g: _images(n, g, 32))),
    "mvit_pool_attention": ("MViTv2 pooling attention: depthwise Conv3d pooling of q/k/v over (T, H, W) reshaped tokens, "
                            "cls token kept aside, LayerNorm, residual pooling", lambda: (TinyMViT(), _video)),
    "video_swin_shifted3d": ("Video Swin: 3-D window_partition, torch.roll over (D, H, W), cnt slice-filled attention mask, "
                             "relative position bias table, int(torch.ceil(torch.tensor(D / w)))", lambda: (
                                 TinyVideoSwin(), lambda n, g: _video(n, g, t=8, side=32))),
    "timesformer_divided": ("TimeSformer divided space-time attention: (b t) n m <-> (b n) t m by reshape/permute, "
                            "cls token repeat(1, T, 1) then mean, temporal_fc", lambda: (TinyTimeSformer(), _video)),
    "clip4clip_meanp": ("CLIP4Clip seqTransf: frames view(b * t), frame position Embedding, (1 - mask) * -1e6 "
                        "repeat_interleave heads, LND MultiheadAttention, masked mean with sum[sum == 0] = 1",
                        lambda: (CLIP4Clip(), _clip4clip_inputs)),
}

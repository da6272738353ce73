"""The packed face CNN the export writes for depthwise presets: same numbers, no shuffles, aligned widths."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from avtca.model.blocks import channel_shuffle
from avtca.model.config import preset
from avtca.model.export import FrameEncoder, torch_to_onnx
from avtca.model.network import AVTCA
from avtca.model.packed import (
    BLOCK,
    PackedFaceEncoder,
    channel_routes,
    end_tensors,
    inference_form,
    packs,
    padded,
    shuffle_source,
)


def model_with_statistics(name: str, **overrides) -> AVTCA:
    """A preset with random weights and BatchNorm statistics gathered from random crops, so folding is tested."""
    torch.manual_seed(0)
    model = AVTCA(preset(name, **overrides))
    cfg = model.cfg
    model.train()
    with torch.no_grad():
        model.encode_frames(torch.randint(0, 256, (1, 4, cfg.face_size, cfg.face_size, cfg.face_channels),
                                          dtype=torch.uint8))
    return model.eval()


def crops(cfg, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, n, cfg.face_size, cfg.face_size, cfg.face_channels), dtype=torch.uint8,
                         generator=g)


def test_shuffle_source_is_channel_shuffle():
    x = torch.arange(58.0).view(1, 58, 1, 1)
    assert torch.equal(channel_shuffle(x, 2).flatten(), x.flatten()[torch.as_tensor(shuffle_source(58))])


@pytest.mark.parametrize("flip,strides", [(False, (2, 2)), (True, (2, 2)), (False, (1, 2))])
def test_packed_paper_face_cnn_computes_the_same_embeddings(flip: bool, strides: tuple[int, int]):
    model = model_with_statistics("paper", face_flip_average=flip, video_strides=strides)
    packed = inference_form(model)
    assert packed is not model and isinstance(packed.face_encoder, PackedFaceEncoder)
    faces = crops(model.cfg, 3, seed=7)
    with torch.no_grad():
        expected = model.encode_frames(faces)
        got = packed.encode_frames(faces)
    assert got.shape == expected.shape == (1, 3, 1024)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    # the original model is left as it was
    assert not isinstance(model.face_encoder, PackedFaceEncoder)


def test_fused_presets_export_as_they_are():
    model = model_with_statistics("live")
    assert not packs(model.cfg) and inference_form(model) is model


def test_packed_frame_encoder_onnx_has_no_shuffles_and_only_aligned_widths(tmp_path: Path):
    model = model_with_statistics("paper")
    cfg = model.cfg
    path = tmp_path / "frames.onnx"
    faces = crops(cfg, 2, seed=3)[0]
    torch_to_onnx(FrameEncoder(inference_form(model)), path, (faces,), ("crops",), "embeddings")
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Split"] == 0
    # none for the crops (the stem reads their channels interleaved), two in the local feature extractor
    # (quarters into channels and back)
    assert ops["Transpose"] == 2 and ops["Slice"] == 0
    weights = {t.name: t.dims for t in proto.graph.initializer}
    conv_widths = [weights[n.input[1]][0] for n in proto.graph.node if n.op_type == "Conv"]
    # every convolution writes a whole number of 16-channel blocks, except the spatial attention's one map
    assert conv_widths and all(w % BLOCK == 0 or w == 1 for w in conv_widths)
    # and every grouped one is depthwise (one input channel per group), which the blocked kernels run
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node
              if n.op_type == "Conv"}
    grouped = [n for n in proto.graph.node if n.op_type == "Conv" and groups[n.name] > 1]
    assert grouped and all(weights[n.input[1]][1] == 1 and weights[n.input[1]][0] == groups[n.name]
                           for n in grouped)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"crops": faces.numpy()})[0]
    with torch.no_grad():
        expected = model.encode_frames(faces[:, None])[:, 0].numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_inference_form_leaves_the_model_alone():
    model = model_with_statistics("paper").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_form(model)
    assert model.training and model.face_encoder.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_pieced_stages_read_and_write_only_the_channels_they_use():
    model = model_with_statistics("paper")
    encoder = inference_form(model).face_encoder
    # stage 2 ends where the local feature extractor puts each channel, so the two add up as they are
    assert np.array_equal(encoder.stage2.pos_out, encoder.local.pos)
    assert encoder.stage2.out_width == 128
    for stage, width in ((encoder.stage2, 116), (encoder.stage3, 232), (encoder.stage4, 464)):
        half = width // 2
        # a unit's first convolution reads its half (plus block padding), not the whole tensor
        assert all(sum(conv.weight.shape[1] for conv in reads) <= padded(half) + 2 * BLOCK for reads in stage.reads)
        # every channel a branch computes is written to exactly one place
        for writes in (stage.b1_pw, stage.b2_last, *stage.writes):
            rows = torch.cat([conv.weight.flatten(1) for conv in writes])
            assert int((rows != 0).any(dim=1).sum()) == half
        # the stage's output holds each logical channel once, in blocks
        assert sorted(set(stage.pos_out.tolist())) == sorted(stage.pos_out.tolist()) and len(stage.pos_out) == width
        assert stage.out_width % BLOCK == 0 and stage.out_width <= padded(width) + 2 * BLOCK


def test_channel_routes_follow_the_shuffles():
    """Every channel a stage computes is read by exactly one later unit or leaves the stage, and a unit's branch
    input is the second half of its input after the previous unit's shuffle (checked against channel_shuffle)."""
    c, units = 58, 4
    reader, branch_input, out = channel_routes(c, units)
    assert len(reader) == (units + 1) * (c // 2) and all(reader[ch] > max(ch[0], 0) for ch in reader)
    assert sorted(out) == sorted(ch for ch, r in reader.items() if r == units)
    # replay the stage on channel labels with channel_shuffle: label = producer * 1000 + index
    def label(ch):
        return (ch[0] + 1) * 1000 + ch[1]

    x = torch.tensor([label((-1, i)) for i in range(c // 2)] + [label((0, i)) for i in range(c // 2)],
                     dtype=torch.float)
    x = channel_shuffle(x.view(1, c, 1, 1), 2).flatten()
    for k in range(1, units):
        assert [label(ch) for ch, _ in sorted(branch_input[k].items(), key=lambda kv: kv[1])] == x[c // 2:].tolist()
        new = torch.tensor([label((k, i)) for i in range(c // 2)], dtype=torch.float)
        x = channel_shuffle(torch.cat((x[:c // 2], new)).view(1, c, 1, 1), 2).flatten()
    assert [label(ch) for ch in out] == x.tolist()


def test_end_tensors_lay_a_stage_output_out_as_asked():
    """Blocks written by the same producers in a row make one tensor; every channel sits where it was asked."""
    out = [(3, i) for i in range(20)] + [(2, i) for i in range(10)]
    pos = np.array([i for i in range(20)] + [32 + i for i in range(10)])  # producer 3 in blocks 0-1, 2 in block 2
    tensors = end_tensors(out, pos, 48)
    assert [len(t) for t in tensors] == [32, 16]
    placed = [ch for t in tensors for ch in t]
    assert all(placed[p] == ch for p, ch in zip(pos, out))
    assert sum(ch is None for ch in placed) == 48 - len(out)
    with pytest.raises(ValueError, match="every block"):
        end_tensors(out, pos, 64)  # the last block would hold nothing

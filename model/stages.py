"""The training stages: face CNN on images, voice on clips, fusion on face-voice pairs, end-to-end on AV clips.

The live recipe runs face -> voice -> fusion. The per-frame face CNN is trained on single images first (like the
reference, which starts from a face CNN trained on a face dataset), then frozen: fusion reuses its cached
per-frame embeddings. A user with real audio-video datasets runs the 'av' stage, end to end.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..app.audio import centre_window
from ..app.modelfile import session_options
from .augment import augment_audio, augment_faces, random_window
from .cache import atomic_save, cache_dir
from .checkpoint import weights_sha256
from .metrics import summarise
from .network import AVTCA
from .packed import inference_form
from .splits import pair_indices

FACE_BATCH = 128
CLIP_BATCH = 32
EVAL_BATCH = 256
LABEL_SMOOTHING = 0.1
SPEC_AUGMENT = (2, 30, 2, 8)  # two time masks up to 0.3 s, two masks up to 8 of the 64 mel bands


def batch_starts(n: int, batch: int) -> range:
    """Starts of the full batches in n items; a single short batch when n < batch (tiny datasets)."""
    return range(0, max(n - batch + 1, 1 if n else 0), batch)


Share = tuple[int, int]  # (rank, world size): which of a torchrun job's processes builds batches, of how many
ALONE: Share = (0, 1)


def epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, np.random.Generator]:
    """The random draws every process shares in an epoch (the order of the items, the pairing)."""
    return torch.Generator().manual_seed(seed * 1000 + epoch), np.random.default_rng(seed * 1000 + epoch)


def my_batches(starts: range, seed: int, epoch: int,
               share: Share) -> Iterator[tuple[int, torch.Generator, np.random.Generator]]:
    """(start, torch generator, numpy generator) of each batch of an epoch this process builds.

    Under torchrun, process `rank` of `world` builds the rank-th batch of each run of `world` consecutive batches
    and no other; a last, shorter run is left out, so that every process takes as many steps (each step's
    gradient all-reduce waits for all of them: one extra step on one process would hang the job). Each batch draws
    from generators of its own, seeded by (seed, epoch, batch number), so a batch holds the same data and the same
    augmentation whichever process builds it and whatever the others build."""
    rank, world = share
    count = len(starts) if world == 1 else len(starts) // world * world
    for k in range(rank, count, world):
        torch_seed, numpy_seed = np.random.SeedSequence([seed, epoch, k]).generate_state(2, np.uint64)
        yield (starts[k], torch.Generator().manual_seed(int(torch_seed) >> 1),
               np.random.default_rng(int(numpy_seed)))


def to_pixels(crops: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float pixels in [0, 255] on `device` (the crops travel as uint8)."""
    return torch.from_numpy(crops).to(device, non_blocking=True).permute(0, 3, 1, 2).float()


def scale_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 255] -> the network's [-1, 1] (the same scaling FaceFrontEnd applies to uint8)."""
    return pixels * (2.0 / 255.0) - 1.0


def softhard(presence_batch: int, g: torch.Generator) -> torch.Tensor:
    """Modality dropout (../shared/AVTCA.md): the batch four times over, as (4B, 2) presence weights:
    both present, a random soft mix (c, 1 - c), voice only, face only."""
    b = presence_batch
    c = torch.rand(b, 1, generator=g)
    return torch.cat([torch.ones(b, 2), torch.cat([c, 1 - c], 1), torch.tensor([[1.0, 0.0]]).expand(b, 2),
                      torch.tensor([[0.0, 1.0]]).expand(b, 2)])


# ---- faces -------------------------------------------------------------------------------------------------

class FrameClassifier(nn.Module):
    """The network's per-frame face CNN with a linear head, for training on single face images."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.encoder = model.face_encoder
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.encoder.out_features, model.cfg.num_classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(scale_pixels(pixels)))


@dataclass
class FaceData:
    train: np.ndarray  # (N, H, W, C) uint8
    train_y: np.ndarray  # (N,) int64
    val: np.ndarray
    val_y: np.ndarray
    train_soft: np.ndarray | None = None  # (N, classes) float32 soft targets (FER+ votes), when asked for


def face_batches(data: FaceData, epoch: int, seed: int, classes: int = 0, mixup: float = 0.0,
                 device: str | torch.device = "cpu", share: Share = ALONE,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """This process's batches (`my_batches`) of augmented face images, labels and soft targets (FER+ votes, or
    None). With mixup > 0 (and `classes`), each image is mixed with another of the batch as in `voice_batches`,
    and so are the targets.

    The images are augmented on `device` (the crops travel there as uint8); the random draws are the same on
    any device."""
    order = torch.randperm(len(data.train), generator=epoch_generators(seed, epoch)[0]).numpy()
    for i, g, rng in my_batches(batch_starts(len(order), FACE_BATCH), seed, epoch, share):
        idx = np.sort(order[i:i + FACE_BATCH])
        pixels = augment_faces(to_pixels(data.train[idx], device), g)
        y = torch.from_numpy(data.train_y[idx])
        soft = torch.from_numpy(data.train_soft[idx]) if data.train_soft is not None else None
        if mixup > 0:
            lam, partner, mixed = mixup_draw(y, classes, mixup, rng, g)
            w = lam.to(pixels.device)[:, :, None, None]
            pixels = w * pixels + (1 - w) * pixels[partner.to(pixels.device)]
            soft = mixed if soft is None else lam * soft + (1 - lam) * soft[partner]
        yield pixels.contiguous(memory_format=torch.channels_last), y, soft


def face_loss(module: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on (input, target) or (input, target, soft target distribution or None) batches."""
    x, y, soft = (*batch, None) if len(batch) == 2 else batch
    logits = module(x).float()
    if soft is not None:
        loss = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    else:
        loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
    return loss, logits.detach(), y


def soft_targets(y: np.ndarray, votes: list[list[int] | None], labels: tuple[str, ...], weight: float) -> np.ndarray:
    """(1 - weight) * one-hot label + weight * the FER+ vote distribution over `labels` (one-hot where no votes)."""
    from .datasets import ferplus_columns

    columns = ferplus_columns(labels)
    out = np.eye(len(labels), dtype=np.float32)[y]
    for n, v in enumerate(votes):
        if v is None:
            continue
        dist = np.zeros(len(labels), np.float32)
        for src, dst in columns.items():
            dist[dst] += v[src]
        if dist.sum() > 0:
            out[n] = (1 - weight) * out[n] + weight * dist / dist.sum()
    return out


@torch.no_grad()
def face_predict(classifier: FrameClassifier, crops: np.ndarray) -> np.ndarray:
    classifier.eval()
    device = next(classifier.parameters()).device
    out = [classifier(to_pixels(crops[i:i + EVAL_BATCH], device)).argmax(1).cpu()
           for i in range(0, len(crops), EVAL_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def teacher_probabilities(path: Path, crops: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """The class probabilities that a face-stage checkpoint (its face CNN and linear head, mirror images
    averaged) gives `crops`, (N, classes) float32, and its label set. The face CNN runs as the app's per-frame
    encoder in ONNX Runtime (`frame_embeddings`), the head in PyTorch."""
    from .checkpoint import load_checkpoint

    model, state = load_checkpoint(path)
    extra = state.get("extra") or {}
    if extra.get("stage") != "face" or "stage_module" not in extra:
        raise ValueError(f"{path} is not a face-stage checkpoint (avtca-train --stage face writes one); a teacher "
                         f"needs the face CNN's own head")
    cfg = model.cfg
    if tuple(crops.shape[1:]) != (cfg.face_size, cfg.face_size, cfg.face_channels):
        raise ValueError(f"the teacher {path} reads {cfg.face_size}x{cfg.face_size}x{cfg.face_channels} face crops, "
                         f"this network {'x'.join(map(str, crops.shape[1:]))}; a teacher must read the same crops")
    classifier = FrameClassifier(model)
    classifier.load_state_dict(extra["stage_module"])
    classifier.eval()
    model.face_encoder.flip_average = True
    emb = torch.from_numpy(frame_embeddings(model, crops, 1, 0, np.float32)[:, 0])  # view 0: the crops as they are
    with torch.no_grad():
        return F.softmax(classifier.head(emb), dim=1).numpy(), tuple(cfg.labels)


def distilled_targets(y: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * one-hot label + weight * the teacher's probabilities."""
    return ((1 - weight) * np.eye(teacher.shape[1], dtype=np.float32)[y] + weight * teacher).astype(np.float32)


def frame_encoder_session(model: AVTCA):
    """The model's per-frame face CNN as the app runs it: avtca-export's per-frame encoder (uint8 crops ->
    embeddings) in an ONNX Runtime session on the CPU, with as many threads as torch uses. Here it encodes a crop
    in less than half the time PyTorch eager takes (docs/probes/embedding_pass.py)."""
    import onnxruntime as ort

    from .export import FrameEncoder, torch_to_onnx  # onnx's import is most of a second: only stages that need it

    cfg = model.cfg
    example = torch.zeros(2, cfg.face_size, cfg.face_size, cfg.face_channels, dtype=torch.uint8)
    training = model.training
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.onnx"
        torch_to_onnx(FrameEncoder(inference_form(model.eval())), path, (example,), ("crops",), "embeddings")
        model.train(training)
        model.face_encoder.eval()  # frozen from here on
        return ort.InferenceSession(str(path), session_options(torch.get_num_threads()),
                                    providers=["CPUExecutionProvider"])


def augmented_views(crops: np.ndarray, views: int, seed: int) -> Iterator[tuple[slice, int, np.ndarray]]:
    """(rows, view number, the rows' view as (n, H, W, C) uint8) over batches of (N, H, W, C) uint8 crops: view 0
    as is, the rest augmented (flip, small affine) and rounded back to uint8 pixels, as a camera's crops are."""
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(crops), EVAL_BATCH):
        pixels = to_pixels(crops[i:i + EVAL_BATCH])
        for v in range(views):
            x = pixels if v == 0 else augment_faces(pixels, g, erase_p=0.0)
            yield slice(i, i + len(pixels)), v, x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def frame_embeddings(model: AVTCA, crops: np.ndarray, views: int, seed: int, dtype=np.float16) -> np.ndarray:
    """(N, views, embed) embeddings of the `augmented_views` of each crop, by `frame_encoder_session`, stored as
    `dtype` (float16 keeps the fusion stage's many views small)."""
    session = frame_encoder_session(model)
    out = np.zeros((len(crops), views, model.face_encoder.out_features), dtype)
    for rows, v, view in augmented_views(crops, views, seed):
        out[rows, v] = session.run(None, {"crops": np.ascontiguousarray(view)})[0]
    return out


def cached_frame_embeddings(model: AVTCA, crops: np.ndarray, views: int, seed: int) -> np.ndarray:
    """`frame_embeddings`, kept in the cache folder (AVTCA_CACHE): the fusion stage's face CNN is frozen, so the
    same weights, crops, views and seed give the same embeddings in every run. The key also covers the code that
    draws the views, so a change there computes them afresh."""
    digest = hashlib.sha256()
    digest.update(weights_sha256(model.face_encoder).encode())
    digest.update(repr((views, seed, model.face_encoder.flip_average, crops.shape, str(crops.dtype))).encode())
    for code in (augment_faces, augmented_views, frame_embeddings, frame_encoder_session):
        digest.update(inspect.getsource(code).encode())
    digest.update(hashlib.sha256(np.ascontiguousarray(crops).tobytes()).digest())
    path = cache_dir() / f"embeddings-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    out = frame_embeddings(model, crops, views, seed)
    atomic_save(path, lambda tmp: np.save(tmp, out))
    return out


# ---- voices ----------------------------------------------------------------------------------------------

@dataclass
class VoiceData:
    train: list[np.ndarray]  # mono float32 clips at the model's rate
    train_y: np.ndarray
    val: list[np.ndarray]
    val_y: np.ndarray


def train_windows(clips: list[np.ndarray], idx: np.ndarray, length: int, g: torch.Generator) -> torch.Tensor:
    """Random `length`-sample windows of the given clips, augmented: (len(idx), length) float32."""
    audio = torch.stack([random_window(torch.from_numpy(clips[i]), length, g) for i in idx])
    return augment_audio(audio, g)


def eval_windows(clips: list[np.ndarray], length: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([centre_window(c, length) for c in clips])) if clips else torch.zeros(0, length)


class VoiceHead(nn.Module):
    """The network run on voice alone: everything after the per-frame CNN, with the face marked missing.

    The video stages see only the constant input of a missing face here; their BatchNorm would learn running
    statistics of a constant that drifts as the weights move, which breaks evaluation mode. They stay frozen
    in evaluation mode until the fusion stage trains them on real faces.
    """

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model
        for module in (model.face_encoder, model.video_stage1, model.video_stage2):
            for p in module.parameters():
                p.requires_grad_(False)
        model.audio_frontend.spec_augment = SPEC_AUGMENT

    def train(self, mode: bool = True) -> "VoiceHead":
        super().train(mode)
        self.model.video_stage1.eval()
        self.model.video_stage2.eval()
        return self

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        b = audio.shape[0]
        empty = audio.new_zeros(b, cfg.frames, self.model.face_encoder.out_features)
        presence = audio.new_tensor([[1.0, 0.0]]).expand(b, 2)
        return self.model.logits_from_embeddings(audio, empty, presence)


def mixup_draw(y: torch.Tensor, classes: int, alpha: float, rng: np.random.Generator,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup for a batch with labels y: (lambda (B, 1) ~ Beta(alpha, alpha) kept >= 0.5 so each row's own label
    dominates, each row's partner index (B,), the mixed soft targets (B, classes))."""
    lam = torch.from_numpy(rng.beta(alpha, alpha, len(y))).float()
    lam = torch.maximum(lam, 1 - lam)[:, None]
    partner = torch.randperm(len(y), generator=g)
    onehot = F.one_hot(y, classes).float()
    return lam, partner, lam * onehot + (1 - lam) * onehot[partner]


def voice_batches(data: VoiceData, length: int, epoch: int, seed: int, classes: int = 0,
                  mixup: float = 0.0, share: Share = ALONE) -> Iterator[tuple[torch.Tensor, ...]]:
    """This process's batches (`my_batches`) of augmented voice windows and labels. With mixup > 0 (and
    `classes`), each window is mixed with another of the batch, weight lambda ~ Beta(mixup, mixup), and the batch
    carries the mixed soft targets."""
    order = torch.randperm(len(data.train), generator=epoch_generators(seed, epoch)[0]).numpy()
    for i, g, rng in my_batches(batch_starts(len(order), CLIP_BATCH), seed, epoch, share):
        idx = order[i:i + CLIP_BATCH]
        audio, y = train_windows(data.train, idx, length, g), torch.from_numpy(data.train_y[idx])
        if mixup <= 0:
            yield audio, y
            continue
        lam, partner, soft = mixup_draw(y, classes, mixup, rng, g)
        yield lam * audio + (1 - lam) * audio[partner], y, soft


# ---- fusion on pairs -----------------------------------------------------------------------------------

class FusionHead(nn.Module):
    """Everything after the per-frame CNN, fed cached frame embeddings: (audio, emb, presence) -> logits."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model
        for p in model.face_encoder.parameters():
            p.requires_grad_(False)
        model.audio_frontend.spec_augment = SPEC_AUGMENT

    def forward(self, audio: torch.Tensor, emb: torch.Tensor, presence: torch.Tensor,
                extra_faces: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the rows of (audio, emb, presence), then for `extra_faces` (E, T, embed) as face-only rows
        (their audio features are exact zeros, as a missing voice makes them)."""
        feats = self.model.audio_frontend(audio)
        if extra_faces is not None:
            feats = torch.cat([feats, feats.new_zeros(len(extra_faces), *feats.shape[1:])])
            emb = torch.cat([emb, extra_faces])
            presence = torch.cat([presence, presence.new_tensor([[0.0, 1.0]]).expand(len(extra_faces), 2)])
        return self.model.logits_from_features(feats, emb, presence)


@dataclass
class PairData:
    voice: VoiceData
    face_emb: np.ndarray  # (N, views, embed) float16, training faces
    face_y: np.ndarray
    val_face_emb: np.ndarray  # (M, embed) float16, validation faces (unaugmented view)
    val_face_y: np.ndarray


def clip_from_views(views: np.ndarray, frames: int, g: torch.Generator) -> torch.Tensor:
    """A face clip of `frames` embeddings drawn from the augmented views of one image: (frames, embed)."""
    pick = torch.randint(0, views.shape[0], (frames,), generator=g).numpy()
    return torch.from_numpy(views[pick].astype(np.float32))


def pair_batches(data: PairData, model: AVTCA, pairs_per_voice: int, epoch: int, seed: int,
                 extra_faces: int = 0, mixup: float = 0.0,
                 share: Share = ALONE) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """This process's batches (`my_batches`) of same-label (voice, face) pairs, each four times over with the
    modality dropout presences, plus `extra_faces` face-only clips of any training faces: the faces paired with
    voices are few (a few thousand per epoch), and without the extras the face path forgets what the face CNN knew.

    With mixup > 0 each pair is mixed with another pair of the batch, voice and face alike, weight
    lambda ~ Beta(mixup, mixup), and the batch carries the mixed soft targets.
    Batches: (audio, embeddings, presence, y, soft targets or None, extra face clips or None, their y or None)."""
    cfg = model.cfg
    epoch_rng = epoch_generators(seed, epoch)[1]
    voice_idx = np.tile(np.arange(len(data.voice.train)), pairs_per_voice)
    epoch_rng.shuffle(voice_idx)
    face_idx = pair_indices(data.voice.train_y[voice_idx], data.face_y, epoch_rng)
    keep = face_idx >= 0
    voice_idx, face_idx = voice_idx[keep], face_idx[keep]
    for i, g, rng in my_batches(batch_starts(len(voice_idx), CLIP_BATCH), seed, epoch, share):
        vi, fi = voice_idx[i:i + CLIP_BATCH], face_idx[i:i + CLIP_BATCH]
        audio = train_windows(data.voice.train, vi, cfg.window_samples, g)
        emb = torch.stack([clip_from_views(data.face_emb[j], cfg.frames, g) for j in fi])
        presence = softhard(len(vi), g)
        y = torch.from_numpy(data.voice.train_y[vi])
        soft = None
        if mixup > 0:
            lam, partner, soft = mixup_draw(y, cfg.num_classes, mixup, rng, g)
            audio = lam * audio + (1 - lam) * audio[partner]
            emb = lam[:, :, None] * emb + (1 - lam[:, :, None]) * emb[partner]
            soft = soft.repeat(4, 1)
        batch = (audio.repeat(4, 1), emb.repeat(4, 1, 1), presence, y.repeat(4), soft, None, None)
        if extra_faces:
            extra = rng.integers(0, len(data.face_y), extra_faces)
            extra_emb = torch.stack([clip_from_views(data.face_emb[j], cfg.frames, g) for j in extra])
            batch = (*batch[:5], extra_emb, torch.from_numpy(data.face_y[extra]))
        yield batch


def fusion_loss(module: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on (audio, faces, presence, y) batches, optionally followed by soft targets for those rows
    (mixup) and (extra face-only clips, their y); absent parts are None."""
    audio, emb, presence, y, *rest = batch
    soft, extra_emb, extra_y = (*rest, None, None, None)[:3]
    if extra_emb is not None:
        logits = module(audio, emb, presence, extra_emb).float()
    else:
        logits = module(audio, emb, presence).float()
    if soft is None:
        y = torch.cat([y, extra_y]) if extra_emb is not None else y
        return F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING), logits.detach(), y
    n = len(y)
    total = -(soft * F.log_softmax(logits[:n], dim=1)).sum()
    if extra_emb is not None:
        total = total + F.cross_entropy(logits[n:], extra_y, label_smoothing=LABEL_SMOOTHING, reduction="sum")
        y = torch.cat([y, extra_y])
    return total / len(logits), logits.detach(), y


def val_pairs(voice_y: np.ndarray, face_y: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pairing of each validation voice clip with a validation face of the same label."""
    return pair_indices(voice_y, face_y, np.random.default_rng(seed))


@torch.no_grad()
def fusion_validate(head: FusionHead, data: PairData, seed: int) -> dict:
    """Fused, face-only and voice-only figures on the same validation pairs; 'selection' is their mean accuracy."""
    cfg = head.model.cfg
    head.eval()
    fi = val_pairs(data.voice.val_y, data.val_face_y, seed)
    keep = np.flatnonzero(fi >= 0)
    audio = eval_windows([data.voice.val[i] for i in keep], cfg.window_samples)
    emb = torch.from_numpy(data.val_face_emb[fi[keep]].astype(np.float32))[:, None, :].expand(-1, cfg.frames, -1)
    y = data.voice.val_y[keep]
    out = {}
    for name, presence in (("fused", [1.0, 1.0]), ("face_only", [0.0, 1.0]), ("voice_only", [1.0, 0.0])):
        p = torch.tensor([presence]).expand(len(keep), 2)
        pred = torch.cat([head(audio[i:i + EVAL_BATCH], emb[i:i + EVAL_BATCH], p[i:i + EVAL_BATCH]).argmax(1)
                          for i in range(0, len(keep), EVAL_BATCH)]).numpy()
        out[name] = summarise(y, pred, cfg.labels)
    metrics = dict(out["fused"])
    metrics["selection"] = float(np.mean([out[k]["accuracy"] for k in out]))
    metrics["modes"] = {k: {m: v[m] for m in ("accuracy", "macro_f1", "uar", "n")} for k, v in out.items()}
    return metrics


# ---- end to end on audio-video clips -------------------------------------------------------------------

@dataclass
class ClipData:
    train_audio: list[np.ndarray]
    train_faces: np.ndarray  # (N, T, H, W, C) uint8, frames spread over each clip's window
    train_y: np.ndarray
    val_audio: list[np.ndarray]
    val_faces: np.ndarray
    val_y: np.ndarray


class FullModel(nn.Module):
    """The whole network on uint8 faces, with pixel augmentation applied before the face CNN."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, pixels: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        b, t = pixels.shape[:2]
        emb = self.model.face_encoder(scale_pixels(pixels.flatten(0, 1))).reshape(b, t, -1)
        return self.model.logits_from_embeddings(audio, emb, presence)


def clip_batches(data: ClipData, model: AVTCA, epoch: int, seed: int, share: Share = ALONE) -> Iterator[tuple]:
    """This process's batches (`my_batches`) of augmented audio-video clips, each four times over with the
    modality dropout presences."""
    cfg = model.cfg
    order = torch.randperm(len(data.train_y), generator=epoch_generators(seed, epoch)[0]).numpy()
    for i, g, _ in my_batches(batch_starts(len(order), CLIP_BATCH), seed, epoch, share):
        idx = order[i:i + CLIP_BATCH]
        audio = train_windows(data.train_audio, idx, cfg.window_samples, g)
        faces = data.train_faces[idx]  # (B, T, H, W, C)
        pixels = augment_faces(to_pixels(faces.reshape(-1, *faces.shape[2:])), g, frames=cfg.frames)
        pixels = pixels.reshape(len(idx), cfg.frames, *pixels.shape[1:])
        presence = softhard(len(idx), g)
        y = torch.from_numpy(data.train_y[idx])
        yield audio.repeat(4, 1), pixels.repeat(4, 1, 1, 1, 1), presence, y.repeat(4)


@torch.no_grad()
def clip_validate(model: AVTCA, data: ClipData) -> dict:
    model.eval()
    audio = eval_windows(data.val_audio, model.cfg.window_samples)
    faces = torch.from_numpy(data.val_faces)
    p = torch.ones(len(data.val_y), 2)
    pred = torch.cat([model(audio[i:i + EVAL_BATCH], faces[i:i + EVAL_BATCH], p[i:i + EVAL_BATCH]).argmax(1)
                      for i in range(0, len(data.val_y), EVAL_BATCH)]).numpy() if len(data.val_y) else np.zeros(0)
    return summarise(data.val_y, pred, model.cfg.labels)

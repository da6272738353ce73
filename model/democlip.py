"""Build the app's demo clip from CREMA-D audio-video clips: python -m avtca.model.democlip VIDEO_DIR -o OUT.mp4

The clips are joined in name order into one H.264/AAC mp4, each clip's audio trimmed or padded to its video
so that sound and picture stay in step across the joins.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..app.cli import output_file
from ..app.media import iter_video_frames, load_audio, video_info

AUDIO_RATE_HZ = 16000
AUDIO_FRAME = 1024


def build(clips: list[Path], out: Path, fps: Fraction = Fraction(30000, 1001)) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        _, _, width, height = video_info(clips[0])
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "28", "preset": "slow"}
        audio = container.add_stream("aac", rate=AUDIO_RATE_HZ, layout="mono")
        frame_index = sample_index = 0
        for clip in clips:
            frames = [rgb for _, rgb in iter_video_frames(clip)]
            for rgb in frames:
                vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                vf.pts = frame_index
                vf.time_base = 1 / fps
                frame_index += 1
                container.mux(video.encode(vf))
            want = int(round(len(frames) / fps * AUDIO_RATE_HZ))
            pcm = load_audio(clip, AUDIO_RATE_HZ)[:want]
            pcm = np.pad(pcm, (0, want - len(pcm)))
            for i in range(0, len(pcm), AUDIO_FRAME):
                chunk = pcm[i:i + AUDIO_FRAME]
                af = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="flt", layout="mono")
                af.sample_rate = AUDIO_RATE_HZ
                af.pts = sample_index
                af.time_base = Fraction(1, AUDIO_RATE_HZ)
                sample_index += len(chunk)
                container.mux(audio.encode(af))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avtca.model.democlip", description=__doc__.splitlines()[0])
    p.add_argument("video_dir", type=Path, help="folder of CREMA-D .flv clips (VideoFlash)")
    p.add_argument("-o", "--output", type=output_file, required=True)
    args = p.parse_args(argv)
    clips = sorted(args.video_dir.glob("*.flv"))
    if not clips:
        raise SystemExit(f"no .flv clips in {args.video_dir}")
    out = build(clips, args.output)
    print(f"wrote {out} from {len(clips)} clips ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

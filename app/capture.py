"""Capture: camera, microphone and media files, all timestamped on one clock. Torch-free.

Producers only copy data into bounded buffers: the newest camera frame replaces the previous one (a frame
nobody took is counted as dropped), audio goes into a fixed-size ring. Every frame and audio block carries
its capture time on the source's clock: time.monotonic() for devices, media time for a file.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import AudioRing
from .media import MediaError, has_tracks, iter_video_frames, load_audio, video_info

RING_SECONDS = 10.0  # audio history kept: enough for any window the model asks for
CAMERA_FAILURES = 30  # failed reads in a row, about a second of them: the camera stopped
CAMERA_RETRY_SECONDS = 1.0  # then it is opened again this often until it delivers
MIC_STALL_SECONDS = 2.0  # no audio block for this long (a sound card sends one every 20 ms): the microphone stopped
MIC_START_SECONDS = 5.0  # the first block may take longer (about 2 s through PulseAudio's ALSA plugin here)
FILE_AUDIO_BLOCK_SECONDS = 0.02  # a file's audio is handed over in blocks this long, like a sound card


class DeviceError(Exception):
    """A camera or microphone that cannot be opened or stopped working."""


@dataclass
class Frame:
    t: float  # capture time, seconds on the source's clock
    rgb: np.ndarray  # (H, W, 3) uint8
    wall: float  # time.monotonic() when it was captured (for latency)
    decode_ms: float = 0.0


class LatestFrame:
    """A one-slot buffer: the newest frame wins; frames replaced before anyone took them are dropped."""

    def __init__(self):
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self.dropped = 0
        self.delivered = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self.delivered += 1
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to `timeout` seconds; None if none came."""
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def peek(self) -> Frame | None:
        with self._cond:
            return self._frame


class Source:
    """Base of every source: a thread that fills `frames` and `audio`, stops cooperatively."""

    realtime = True
    name = "source"

    def __init__(self):
        self.frames = LatestFrame()
        self.audio: AudioRing | None = None
        self.error: str | None = None  # the last fault, in one sentence, for the status line
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self.run()
        except (DeviceError, MediaError) as e:
            self.error = str(e)
        finally:
            self.finished.set()

    def run(self) -> None:
        raise NotImplementedError

    def fault(self) -> str | None:
        """The last fault, in one sentence, or None."""
        return self.error

    def clock(self) -> float:
        """Now, on this source's clock."""
        return time.monotonic()

    def exhausted(self) -> bool:
        """Nothing more will come: the source ended and its last frame was taken."""
        return self.finished.is_set() and self.frames.peek() is None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.release()

    def release(self) -> None:
        """Free the device; called once the thread has ended."""


# ---- camera -------------------------------------------------------------------------------------------------

def camera_names() -> dict[int, str]:
    """{index: name} of the cameras the platform lists (Linux: /sys/class/video4linux)."""
    out = {}
    for node in sorted(Path("/sys/class/video4linux").glob("video*")):
        try:
            out[int(node.name[5:])] = (node / "name").read_text().strip()
        except (OSError, ValueError):
            continue
    return out


def resolve_camera(spec: str | int) -> int | str:
    """A camera index from an index or (part of) a listed name; a device path (/dev/video2) or a stream URL
    is passed through to OpenCV as it is."""
    if isinstance(spec, int) or str(spec).isdigit():
        return int(spec)
    if str(spec).startswith(("/", "rtsp://", "http://", "https://")):
        return str(spec)
    for index, name in camera_names().items():
        if str(spec).lower() in name.lower():
            return index
    raise DeviceError(f"no camera named like {spec!r}; avtca-live --list-devices shows the cameras found")


class CameraSource(Source):
    """OpenCV capture in its own thread; frames converted to RGB at capture."""

    name = "camera"

    def __init__(self, spec: str | int = 0):
        super().__init__()
        import cv2

        self._cv2 = cv2
        self.index = resolve_camera(spec)
        self._cap = self._open()
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(f"no camera could be opened at {self.index}; connect one, pick another with "
                              f"--camera, or play a file with --source FILE")

    def _open(self):
        """A capture of this camera. Opening, OpenCV logs every backend it tried, ten lines for one missing camera;
        the app's own sentence says what matters."""
        logging = self._cv2.utils.logging
        level = logging.getLogLevel()
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        try:
            return self._cv2.VideoCapture(self.index)
        finally:
            logging.setLogLevel(level)

    def run(self) -> None:
        try:
            self._capture()
        finally:  # also when stop() gave up waiting for an open that took long: the capture is this thread's
            self._cap.release()

    def _capture(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                failures += 1
                if failures < CAMERA_FAILURES:
                    time.sleep(0.03)
                    continue
                # About a second without a frame (unplugged, its driver or stream gone): say so, and open it
                # again each CAMERA_RETRY_SECONDS until it delivers or the app stops.
                self.error = (f"camera {self.index} delivers no frames; the face is marked missing until it does "
                              f"(check its connection, or pick another with --camera)")
                self._cap.release()
                if self._stop.wait(CAMERA_RETRY_SECONDS):
                    return
                self._cap = self._open()
                failures = 0
                continue
            failures = 0
            self.error = None
            rgb = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
            self.frames.put(Frame(now, rgb, now, (time.monotonic() - now) * 1000))

    def release(self) -> None:
        self._cap.release()


# ---- microphone -----------------------------------------------------------------------------------------------

def sounddevice_or_error():
    """The sounddevice module, or DeviceError saying why audio input is unavailable."""
    try:
        import sounddevice
    except OSError as e:  # raised at import when the PortAudio library is missing
        raise DeviceError(f"no PortAudio library ({e}); install it (Debian/Ubuntu: sudo apt-get install libportaudio2) "
                          f"to use a microphone") from e
    return sounddevice


def list_microphones() -> list[tuple[int, str, float]]:
    """(index, name, default sample rate) of every input device."""
    sd = sounddevice_or_error()
    return [(i, d["name"], float(d["default_samplerate"])) for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


class MicSource:
    """sounddevice input stream; its callback only copies mono samples into the ring with their time."""

    def __init__(self, ring_owner: Source, spec: str | int | None = None):
        sd = sounddevice_or_error()
        try:
            device = int(spec) if spec is not None and str(spec).isdigit() else spec
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"no microphone {'matching ' + repr(spec) if spec is not None else 'found'} ({e}); "
                              f"avtca-live --list-devices shows the microphones") from e
        self.name = info["name"]
        self.rate = int(info["default_samplerate"])
        ring_owner.audio = AudioRing(self.rate, RING_SECONDS)
        ring = self.ring = ring_owner.audio

        def callback(indata, frames, t, status):  # PortAudio's thread: copy and return
            ring.write(indata[:, 0].copy(), time.monotonic())

        try:
            self._stream = sd.InputStream(device=info["index"], channels=1, samplerate=self.rate, dtype="float32",
                                          blocksize=int(self.rate * 0.02), callback=callback)
            self._stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"microphone {self.name!r} could not be started ({e})") from e
        self.started = time.monotonic()

    def fault(self) -> str | None:
        """A sentence while no audio has come for MIC_STALL_SECONDS, or since it started for MIC_START_SECONDS
        (unplugged, its driver or sound server gone); None while it delivers. Meanwhile the ticks find silence in
        their windows, so the voice is marked missing."""
        now, newest = time.monotonic(), self.ring.t_end
        if (now - self.started <= MIC_START_SECONDS) if newest is None else (now - newest <= MIC_STALL_SECONDS):
            return None
        return (f"microphone {self.name!r} delivers no audio; the voice is marked missing until it does (check its "
                f"connection, or pick another with --mic)")

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class DeviceSource(Source):
    """A camera and a microphone together; either may be absent, never both."""

    name = "devices"

    def __init__(self, camera: CameraSource | None, mic_spec: str | int | None, use_mic: bool = True):
        super().__init__()
        self.camera = camera
        self.mic: MicSource | None = None
        self.notes: list[str] = []
        if camera is not None:
            self.frames = camera.frames
        mic_error = "not asked for"
        if use_mic:
            try:
                self.mic = MicSource(self, mic_spec)
            except DeviceError as e:
                mic_error = str(e)
                self.notes.append(f"{e}; running on video alone")
        if camera is None and self.mic is None:
            raise DeviceError(f"neither a camera nor a microphone could be opened (the microphone: {mic_error}); play "
                              f"a file with --source FILE")

    def start(self) -> None:
        if self.camera is not None:
            self.camera.start()

    def run(self) -> None:  # the camera runs its own thread
        pass

    def fault(self) -> str | None:
        faults = [device.fault() for device in (self.camera, self.mic) if device is not None]
        return "; ".join(f for f in faults if f) or None

    def exhausted(self) -> bool:
        camera_done = self.camera is None or self.camera.exhausted()
        return camera_done and self.mic is None

    def stop(self) -> None:
        if self.camera is not None:
            self.camera.stop()
        if self.mic is not None:
            self.mic.close()


# ---- file ------------------------------------------------------------------------------------------------------

class FileSource(Source):
    """A media file played through the same buffers as a camera and a microphone.

    Real time by default (frames and audio blocks are released when the wall clock reaches their media time);
    `fast` releases them as fast as the consumer takes them. The clock is media time in seconds.
    """

    name = "file"

    def __init__(self, path: str | Path, sample_rate_hz: int, fast: bool = False):
        super().__init__()
        self.path = Path(path)
        self.realtime = not fast
        has_audio, has_video = has_tracks(self.path)
        self.notes: list[str] = []
        self.duration = 0.0
        self.has_video = has_video
        if has_video:
            self.fps, self.duration, self.width, self.height = video_info(self.path)
        else:
            self.notes.append(f"{self.path.name} has no video track; running on the voice alone")
        self.samples = np.zeros(0, np.float32)
        if has_audio:
            self.samples = load_audio(self.path, sample_rate_hz)
            self.duration = max(self.duration, len(self.samples) / sample_rate_hz)
        else:
            self.notes.append(f"{self.path.name} has no audio track; running on the face alone")
        if not has_audio and not has_video:
            raise MediaError(f"media file {self.path} has neither audio nor video")
        self.sample_rate_hz = sample_rate_hz
        self.audio = AudioRing(sample_rate_hz, RING_SECONDS)
        self.audio_written_until = 0.0
        self._start = time.monotonic()

    def clock(self) -> float:
        """Media time now, in real-time playback."""
        return time.monotonic() - self._start

    def feed_audio_until(self, t: float) -> None:
        """Hand over the file's audio up to media time t, in sound-card-sized blocks."""
        block = int(FILE_AUDIO_BLOCK_SECONDS * self.sample_rate_hz)
        end = min(int(round(t * self.sample_rate_hz)), len(self.samples))
        pos = int(round(self.audio_written_until * self.sample_rate_hz))
        while pos < end:
            nxt = min(pos + block, end)
            self.audio.write(self.samples[pos:nxt], nxt / self.sample_rate_hz)
            pos = nxt
        self.audio_written_until = max(self.audio_written_until, end / self.sample_rate_hz)

    def events(self) -> Iterator[tuple[float, Frame | None]]:
        """(media time, frame) in order; audio-only files give (time, None) every audio block."""
        if not self.has_video:
            n = int(math.ceil(self.duration / FILE_AUDIO_BLOCK_SECONDS))
            for i in range(1, n + 1):
                yield min(i * FILE_AUDIO_BLOCK_SECONDS, self.duration), None
            return
        last = time.perf_counter()
        for t, rgb in iter_video_frames(self.path):
            decode_ms = (time.perf_counter() - last) * 1000
            yield t, Frame(t, rgb, time.monotonic(), decode_ms)
            last = time.perf_counter()
        yield self.duration, None

    def start(self) -> None:
        self._start = time.monotonic()  # media time 0 is now
        super().start()

    def run(self) -> None:
        """Real-time playback: release each frame and audio block when the wall clock reaches its time."""
        for t, frame in self.events():
            if self._stop.wait(max(0.0, self._start + t - time.monotonic())):
                return
            self.feed_audio_until(t)
            if frame is not None:
                frame.wall = time.monotonic()
                self.frames.put(frame)


def open_source(source: str | None, camera: str | None, mic: str | None, sample_rate_hz: int, fast: bool,
                demo: Path | None, log=print) -> Source:
    """The source the command line asks for, falling back to the demo clip where no camera exists."""
    if source:
        return FileSource(source, sample_rate_hz, fast)
    if camera is not None and camera.lower() == "none":
        return DeviceSource(None, mic)
    try:
        cam = CameraSource(camera if camera is not None else 0)
    except DeviceError as e:
        if camera is None and demo is not None and demo.is_file():
            log(f"{e}. Playing the bundled demo clip {demo} instead.")
            return FileSource(demo, sample_rate_hz, fast)
        log(f"{e}; going on with the microphone alone.")
        cam = None
    dev = DeviceSource(cam, mic)
    for note in dev.notes:
        log(note)
    return dev

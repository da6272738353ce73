"""Dataset readers, label mapping, speaker-independent splits, and bad files skipped and counted."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from avtca.app.media import load_audio
from avtca.model.cache import load_audio_clips, load_face_images
from avtca.model.config import LIVE_LABELS, RAVDESS_LABELS
from avtca.model.datasets import Item, read_dataset
from avtca.model.labels import map_label, mapping_table
from avtca.model.splits import kfold_by_actor, named_split, parse_actors, random_split

from conftest import shared

RAVDESS_SPEECH = ("ravdess", "Audio_Speech_16k_Actors_01-20")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVTCA_CACHE", str(tmp_path / "cache"))


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Two seconds of real speech (RAVDESS actor 01) to fill the files the tests make."""
    path = shared(*RAVDESS_SPEECH, "Actor_01", "03-01-05-01-01-01-01.flac")
    return load_audio(path, 16000)[8000:40000]


def test_ravdess_names_actors_and_modalities():
    report = read_dataset("ravdess", shared(*RAVDESS_SPEECH))
    assert len(report.items) == 1200
    assert sorted({it.speaker for it in report.items}) == [f"{a:02d}" for a in range(1, 21)]
    item = next(it for it in report.items if it.path.name == "03-01-06-02-01-02-17.flac")
    assert (item.label, item.speaker, item.kind) == ("fearful", "17", "audio")
    per_actor = [it for it in report.items if it.speaker == "05"]
    counts = {label: sum(it.label == label for it in per_actor) for label in RAVDESS_LABELS}
    assert counts["neutral"] == 4 and all(counts[k] == 8 for k in RAVDESS_LABELS if k != "neutral")
    av = read_dataset("ravdess", shared("ravdess", "Actor_01_av"), modalities=("av",))
    assert [(it.kind, it.label, it.speaker) for it in av.items] == [("av", "neutral", "01")]


def test_cremad_names():
    report = read_dataset("crema-d", shared("crema-d"))
    kinds = {(it.kind, it.speaker) for it in report.items}
    assert kinds == {("av", "1001"), ("audio", "1001"), ("audio", "1002")}
    labels = sorted({it.label for it in report.items})
    assert labels == ["angry", "disgust", "fear", "happy", "neutral", "sad"]


def test_fer2013_splits_and_counts():
    report = read_dataset("fer2013", shared("fer2013"))
    train = [it for it in report.items if it.split == "train"]
    test = [it for it in report.items if it.split == "test"]
    assert (len(train), len(test)) == (28709, 3589)
    assert sum(it.label == "disgust" for it in train) == 436


def test_emodb_tess_and_manifest_made_here(tmp_path: Path, speech: np.ndarray):
    write_wav(tmp_path / "emodb" / "wav" / "03a01Fa.wav", speech)
    write_wav(tmp_path / "emodb" / "wav" / "11b02Lb.wav", speech)
    write_wav(tmp_path / "emodb" / "wav" / "readme.wav", speech)
    emodb = read_dataset("emodb", tmp_path / "emodb")
    assert [(it.label, it.speaker) for it in emodb.items] == [("happiness", "03"), ("boredom", "11")]
    assert sum(emodb.skipped.values()) == 1
    assert map_label("boredom", LIVE_LABELS) is None  # dropped, and the mapping says so
    assert mapping_table(["happiness", "boredom"], LIVE_LABELS) == {"boredom": None, "happiness": "happy"}

    write_wav(tmp_path / "tess" / "OAF_angry" / "OAF_back_angry.wav", speech)
    write_wav(tmp_path / "tess" / "YAF_pleasant_surprised" / "YAF_bite_ps.wav", speech)
    tess = read_dataset("tess", tmp_path / "tess")
    assert sorted((it.label, it.speaker) for it in tess.items) == [("angry", "OAF"), ("ps", "YAF")]
    assert LIVE_LABELS[map_label("ps", LIVE_LABELS)] == "surprised"

    clip = write_wav(tmp_path / "mosei" / "seg.wav", speech)
    manifest = tmp_path / "mosei" / "manifest.csv"
    manifest.write_text("path,label,speaker,start,end\nseg.wav,happy,spk7,0.5,1.5\n")
    items = read_dataset("manifest", manifest).items
    assert items == [Item(clip, "happy", "spk7", "manifest", "audio", start=0.5, end=1.5)]
    clips, kept, _ = load_audio_clips(items, 16000)
    assert list(kept) == [0] and len(clips[0]) == 16000  # the segment, resampled and cut
    cached, kept_again, _ = load_audio_clips(items, 16000)  # the second call reads the cache
    assert list(kept_again) == [0] and np.array_equal(cached[0], clips[0])
    # A row the manifest reader cannot take is named by its line, with what to write instead.
    manifest.write_text("path,label,speaker,start,end\nseg.wav,happy,spk7,,\nseg.wav,bored,spk7,,\n")
    with pytest.raises(ValueError, match=r"manifest .*manifest.csv, line 3: the label 'bored' is not an emotion name "
                                         r"this project reads; use one of anger, angry, boredom, calm"):
        read_dataset("manifest", manifest)
    manifest.write_text("path,label,speaker,start,end\nseg.wav,happy,spk7,0:30,1:00\n")
    with pytest.raises(ValueError, match=r"line 2: start and end must be seconds, e.g. 1.5, or empty \(they are "
                                         r"'0:30' and '1:00'\)"):
        read_dataset("manifest", manifest)
    # Speakers named, not numbered, split by --fold; an actor list cannot name them.
    manifest.write_text("path,label,speaker\n" + "".join(f"seg.wav,happy,spk{k}\n" for k in range(4)))
    items = read_dataset("manifest", manifest).items
    with pytest.raises(ValueError, match="the speaker 'spk0' of seg.wav is not a number, so an actor list"):
        named_split(items, "live")
    folds = kfold_by_actor(items, 4, 0)
    assert [it.speaker for it in folds["test"]] == ["spk0"] and [it.speaker for it in folds["val"]] == ["spk1"]


def test_label_mapping_calm_to_neutral_only_where_needed():
    assert LIVE_LABELS[map_label("calm", LIVE_LABELS)] == "neutral"
    assert RAVDESS_LABELS[map_label("calm", RAVDESS_LABELS)] == "calm"
    assert LIVE_LABELS[map_label("surprise", LIVE_LABELS)] == "surprised"
    with pytest.raises(ValueError, match="unknown emotion label"):
        map_label("bemused", LIVE_LABELS)


def test_actor_splits_never_overlap():
    items = read_dataset("ravdess", shared(*RAVDESS_SPEECH)).items
    parts = named_split(items, "live")
    speakers = {k: {it.speaker for it in v} for k, v in parts.items()}
    assert speakers["val"] == {"17", "18", "19", "20"} and speakers["test"] == set()
    assert speakers["train"] == {f"{a:02d}" for a in range(1, 17)}
    ref = {k: {int(it.speaker) for it in v} for k, v in named_split(items, "ravdess-reference").items()}
    assert ref["test"] == {1, 2, 3, 4} and ref["val"] == {5, 6, 7, 8} and min(ref["train"]) == 9
    for fold in range(5):
        folds = {k: {it.speaker for it in v} for k, v in kfold_by_actor(items, 5, fold).items()}
        assert not (folds["train"] & folds["val"]) and not (folds["train"] & folds["test"])
        assert not (folds["val"] & folds["test"]) and len(folds["test"]) == 4
    assert parse_actors("1-4,7") == {1, 2, 3, 4, 7}
    with pytest.warns(UserWarning, match="same actors"):
        random_split(items, seed=0)


def test_bad_files_are_skipped_and_counted(tmp_path: Path, speech: np.ndarray):
    root = tmp_path / "Actor_21"
    good = write_wav(root / "03-01-03-01-01-01-21.wav", speech)
    corrupt = root / "03-01-04-01-01-01-21.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    empty = root / "03-01-05-01-01-01-21.wav"
    empty.write_bytes(b"")
    silent = write_wav(root / "03-01-06-01-01-01-21.wav", np.zeros(16000))
    items = read_dataset("ravdess", tmp_path).items
    assert len(items) == 4
    clips, kept, skipped = load_audio_clips(items, 16000)
    assert [items[i].path for i in kept] == [good]
    assert skipped == {"unreadable media": 1, "empty file": 1, "silent audio": 1}
    assert silent.exists()

    faces_dir = tmp_path / "fer" / "train" / "happy"
    faces_dir.mkdir(parents=True)
    (faces_dir / "Training_1.jpg").write_bytes(b"not a jpeg")
    real = shared("fer2013", "train", "happy")
    first = sorted(real.iterdir())[0]
    (faces_dir / "Training_2.jpg").write_bytes(first.read_bytes())
    fer = read_dataset("fer2013", tmp_path / "fer").items
    crops, kept, skipped = load_face_images(fer, 48, 1)
    assert crops.shape == (1, 48, 48, 1) and skipped == {"unreadable image": 1}


def test_ferplus_votes_become_soft_targets():
    from avtca.model.datasets import ferplus_key, read_ferplus_votes
    from avtca.model.stages import soft_targets

    votes = read_ferplus_votes(shared("ferplus"))
    image = shared("fer2013", "train", "angry", "Training_1426440.jpg")
    v = votes[ferplus_key(image)]
    assert v == [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]  # neutral 4, sadness 1, anger 3, disgust 2
    y = np.array([LIVE_LABELS.index("angry"), LIVE_LABELS.index("happy")])
    soft = soft_targets(y, [v, None], LIVE_LABELS, 0.5)
    assert soft.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert soft[0, LIVE_LABELS.index("angry")] == pytest.approx(0.5 + 0.5 * 3 / 10)
    assert soft[0, LIVE_LABELS.index("neutral")] == pytest.approx(0.5 * 4 / 10)
    assert soft[1, LIVE_LABELS.index("happy")] == 1.0  # no votes: the FER2013 label alone


def test_two_writers_of_one_cache_file_do_not_collide(tmp_path):
    """Two processes preparing the same data (the ranks of a torchrun job) may save the same cache file at the
    same moment: each writes its own temporary file, both renames succeed, and no temporary file is left."""
    from avtca.model.cache import atomic_save

    path = tmp_path / "cache" / "voices-abc.npz"

    def outer(tmp):
        np.savez(tmp, x=np.arange(3))
        atomic_save(path, lambda other: np.savez(other, x=np.arange(5)))  # the other rank, in between
        assert path.is_file() and tmp.is_file()

    atomic_save(path, outer)
    with np.load(path) as saved:
        assert saved["x"].tolist() == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_ferplus_majority_is_the_one_most_voted_class_in_the_labels():
    from avtca.model.datasets import ferplus_majority

    # neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    assert ferplus_majority([0, 1, 0, 6, 0, 0, 3, 0, 0, 0], LIVE_LABELS) == LIVE_LABELS.index("sad")
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 2, 0, 0, 0], LIVE_LABELS) == LIVE_LABELS.index("fearful")
    assert ferplus_majority([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], LIVE_LABELS) is None  # a tie
    assert ferplus_majority([1, 0, 0, 1, 0, 2, 0, 6, 0, 0], LIVE_LABELS) is None  # contempt, not a live label
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], LIVE_LABELS) is None
    assert ferplus_majority(None, LIVE_LABELS) is None


def test_faces_are_scored_against_the_ferplus_crowd(tmp_path):
    """Four real PublicTest images: the crowd agrees with FER2013's label, disagrees, ties, and picks contempt."""
    from avtca.model.datasets import ferplus_key, read_ferplus_votes
    from avtca.model.evaluate import crowd_scores

    names = ["test/happy/PublicTest_63310337.jpg",     # happiness 10: agrees
             "test/fear/PublicTest_84039470.jpg",      # sadness 6, fear 3: disagrees
             "test/neutral/PublicTest_11074159.jpg",   # neutral 5, happiness 5: no majority
             "test/disgust/PublicTest_93710701.jpg"]   # contempt 6: no majority in the labels
    root = tmp_path / "elsewhere" / "fer"
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(shared("fer2013", *name.split("/")).read_bytes())
    items = sorted((it for it in read_dataset("fer2013", root).items), key=lambda it: names.index(ferplus_key(it.path)))
    y = np.array([map_label(it.label, LIVE_LABELS) for it in items])
    predicted = np.array([LIVE_LABELS.index(c) for c in ("happy", "fearful", "neutral", "angry")])
    result, notes = crowd_scores(read_ferplus_votes(shared("ferplus")), items, y, predicted, LIVE_LABELS)
    assert result["n"] == 2 and result["accuracy"] == 0.5  # happy right; the crowd says sad, not fearful
    assert result["crowd_agrees_with_fer2013"] == 0.5
    assert result["confusion_matrix"][LIVE_LABELS.index("sad")][LIVE_LABELS.index("fearful")] == 1
    assert notes["images_without_votes"] == 0 and notes["images_without_a_majority_in_the_labels"] == 2


def test_ferplus_scoring_needs_fer2013_images_and_the_votes(capsys, tmp_path):
    from avtca.model.evaluate import main

    with pytest.raises(SystemExit):
        main(["--dataset", "ravdess", "--root", ".", "--ferplus", str(shared("ferplus"))])
    assert "--ferplus scores FER2013 images only" in capsys.readouterr().err
    # A folder without the votes is named at once, before any image is read.
    assert main(["--dataset", "fer2013", "--root", str(tmp_path), "--ferplus", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fer2013new.csv is missing; --ferplus needs fer2013new.csv and ferplus_to_fer2013_jpg.csv" in err


def test_duplicates_of_training_images_are_scored_apart_and_with_the_rest(tmp_path):
    """FER2013 test figures leave out exact copies of training images; avtca-eval also scores those copies alone
    and with the rest, the way published figures count them."""
    import json

    from avtca.model.evaluate import main

    trained = [p for c in ("happy", "sad") for p in sorted(shared("fer2013", "train", c).iterdir())[:2]]
    copies = [(p, f"test/{p.parent.name}/PublicTest_copy{k}.jpg") for k, p in enumerate(trained)]
    others = [(shared("fer2013", *n.split("/")), n) for n in (
        "test/happy/PublicTest_63310337.jpg", "test/fear/PublicTest_84039470.jpg", "test/neutral/PublicTest_11074159.jpg")]
    unrelated = [(shared("fer2013", "train", "angry", "Training_1426440.jpg"), "train/angry/Training_1426440.jpg")]

    def scored(name: str, files: list[tuple[Path, str]]) -> dict:
        root = tmp_path / name
        for source, target in files:
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            (root / target).write_bytes(source.read_bytes())
        assert main(["--dataset", "fer2013", "--root", str(root), "--json", str(root / "r.json"), "--threads", "1"]) == 0
        return json.loads((root / "r.json").read_text())

    both = scored("both", [(p, f"train/{p.parent.name}/{p.name}") for p in trained] + copies + others)
    alone = scored("copies", unrelated + copies)  # the same pixels as plain test images: nothing in training has them
    rest = scored("others", unrelated + others)
    assert both["notes"]["duplicates_of_training_removed"] == 4 and both["n"] == 3
    assert both["accuracy"] == rest["accuracy"] and both["confusion_matrix"] == rest["confusion_matrix"]
    assert alone["n"] == 4 and "duplicates_of_training" not in alone
    d = both["duplicates_of_training"]
    assert d["n"] == 4 and d["n_with_them"] == 7
    assert d["accuracy_on_them"] == pytest.approx(alone["accuracy"])
    assert d["accuracy_with_them"] == pytest.approx((3 * both["accuracy"] + 4 * d["accuracy_on_them"]) / 7)


def test_an_av_clip_takes_the_frames_the_app_would_take():
    """Training and `avtca-eval --av` cut a clip's face crops at the app's own crop times (`clip_times`: on the
    0.125-s grid), from the frames nearest those times, with the app's cropper."""
    from avtca.app.faces import FaceDetector, crop_face
    from avtca.app.media import iter_video_frames
    from avtca.app.pipeline import clip_times
    from avtca.model.clips import clip_faces
    from avtca.model.config import preset

    clip = shared("crema-d", "VideoFlash", "1001_DFA_ANG_XX.flv")
    cfg = preset("live")
    duration = len(load_audio(clip, cfg.sample_rate_hz)) / cfg.sample_rate_hz
    frames = list(iter_video_frames(clip))
    times = np.array([t for t, _ in frames])
    start = max(0.0, (duration - cfg.window_seconds) / 2)
    wanted = clip_times(start + cfg.window_seconds, cfg.window_seconds, cfg.frames)
    assert np.allclose(np.array(wanted) / 0.125, np.round(np.array(wanted) / 0.125))
    with FaceDetector(video_mode=False) as detector:
        crops, missing = clip_faces(clip, cfg, detector, duration)
        assert missing == 0 and crops.shape == (cfg.frames, cfg.face_size, cfg.face_size, cfg.face_channels)
        for crop, t in zip(crops, wanted):
            nearest = int(np.argmin(np.abs(times - t)))
            if t <= times[-1]:  # within the video: the frame nearest the time, about half a frame away at most
                assert abs(times[nearest] - t) <= np.median(np.diff(times)) / 2 + 0.001  # FLV times are whole ms
            rgb = frames[nearest][1]
            expected = crop_face(rgb, detector.detect(rgb)[0], cfg.face_size, cfg.face_channels)
            assert np.array_equal(crop, expected)


def test_a_folder_without_the_dataset_is_one_sentence_naming_the_layout(tmp_path: Path, speech: np.ndarray):
    with pytest.raises(ValueError) as e:
        read_dataset("fer2013", shared(*RAVDESS_SPEECH))
    assert str(e.value).startswith(f"found no fer2013 files under {shared(*RAVDESS_SPEECH)}; the reader looks for "
                                   "images in folders named after their class")
    # Files that are there but do not follow the layout are counted in the sentence.
    write_wav(tmp_path / "voices" / "speaker1_happy.wav", speech)
    write_wav(tmp_path / "voices" / "speaker1_sad.wav", speech)
    with pytest.raises(ValueError, match=r"found no emodb files under .*voices \(it passed over 2: 2 name is not "
                                         r"SSTTTEv \(e\.g\. 03a01Fa\)\); the reader looks for files named like"):
        read_dataset("emodb", tmp_path / "voices")
    # RAVDESS speech holds no audio-video files.
    with pytest.raises(ValueError, match=r"found no ravdess audio-video files under .*\(it passed over 1200: 1200 "
                                         r"not selected \(audio, speech\)\)"):
        read_dataset("ravdess", shared(*RAVDESS_SPEECH), modalities=("av",))
    manifest = tmp_path / "empty.csv"
    manifest.write_text("path,label,speaker\n")
    with pytest.raises(ValueError, match="lists no files; give it rows of path, label, speaker"):
        read_dataset("manifest", manifest)


def test_speakers_read_as_ranges():
    from avtca.model.datasets import speakers_text

    assert speakers_text(["05", "01", "02", "03", "17", "18", "19", "20"]) == "01-03, 05, 17-20"
    assert speakers_text([str(a) for a in range(1001, 1092)]) == "1001-1091"
    assert speakers_text(["YAF", "OAF", "OAF"]) == "OAF, YAF"
    assert speakers_text(["7"]) == "7"


def test_training_refuses_splits_that_leave_nothing(tmp_path, capsys):
    from avtca.model import train

    voices = shared(*RAVDESS_SPEECH)
    common = ["--stage", "voice", "--voice", f"ravdess={voices}", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert train.main([*common, "--val-actors", "21-24"]) == 1
    assert ("--val-actors 21-24 leaves no validation voice clips: the 1200 found are by speakers 01-20; choose others "
            "with --val-actors, --test-actors or --fold") in capsys.readouterr().err
    assert train.main([*common, "--val-actors", "1-24"]) == 1
    assert "--val-actors 1-24 leaves no training voice clips" in capsys.readouterr().err
    fer_test = shared("fer2013", "test")
    assert train.main(["--stage", "face", "--faces", f"fer2013={fer_test}", "--epochs", "1",
                       "--out", str(tmp_path / "run")]) == 1
    assert (f"none of the 3589 face images under {fer_test} is in the train split (the splits there: test); the face "
            "stage trains on train and validates on test") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluation_refuses_to_score_nothing(tmp_path, capsys, speech: np.ndarray):
    from avtca.model.evaluate import main

    model = ["--model", str(Path(__file__).parents[1] / "exported" / "avtca.onnx")]
    assert main([*model, "--dataset", "ravdess", "--root", str(shared(*RAVDESS_SPEECH)), "--actors", "30-33"]) == 1
    assert ("none of the 1200 ravdess files is by actors 30-33; the actors there are 01-20"
            in capsys.readouterr().err)
    assert main([*model, "--dataset", "fer2013", "--root", str(shared("fer2013", "train")), "--split", "test"]) == 1
    assert "is in the test split (the splits there: train)" in capsys.readouterr().err
    # Clips that are all unreadable or silent: each reason counted, no figure printed.
    root = tmp_path / "Actor_21"
    write_wav(root / "03-01-06-01-01-01-21.wav", np.zeros(16000))
    (root / "03-01-04-01-01-01-21.wav").write_bytes(b"")
    assert main([*model, "--dataset", "ravdess", "--root", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    assert "none of the 2 ravdess clips could be scored (1 " in captured.err
    assert "silent audio" in captured.err and "empty file" in captured.err
    assert "accuracy" not in captured.out and not (tmp_path / "r.json").exists()

"""Annotation parsing: Kinetics CSV, list files, class folders."""
from pathlib import Path

import pytest

from ired_video.data.annotations import (
    AnnotationError,
    load_annotations,
    parse_class_folders,
    parse_kinetics_csv,
    parse_list_file,
)

CSV = '''label,youtube_id,time_start,time_end,split,is_cc
"passing American football (in game)",-abc_DEF123,14,24,train,0
"tying bow tie",xYz987654_1,0,10,train,0
"arm wrestling, indoors",Q1w2E3r4T5y,100,110,train,1
"tying bow tie",missing0001,5,15,train,0
"arm wrestling, indoors",vaLid000000,3,13,val,0
'''


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize("per_class", [False, True])
def test_kinetics_csv_flat_or_per_class(tmp_path, per_class, caplog):
    (tmp_path / "train.csv").write_text(CSV)
    for label, stem in [("passing American football (in game)", "-abc_DEF123_000014_000024"),
                        ("tying bow tie", "xYz987654_1_000000_000010"),
                        ("arm wrestling, indoors", "Q1w2E3r4T5y_000100_000110"),
                        ("arm wrestling, indoors", "vaLid000000_000003_000013")]:
        touch(tmp_path / "videos" / (label if per_class else "") / f"{stem}.mkv")
    ann = parse_kinetics_csv(tmp_path / "train.csv", tmp_path / "videos", split="train")
    assert ann.class_names == ["arm wrestling, indoors", "passing American football (in game)",
                               "tying bow tie"]
    assert [(Path(r.path).stem, r.label, r.source_row) for r in ann.records] == [
        ("-abc_DEF123_000014_000024", 1, 0), ("xYz987654_1_000000_000010", 2, 1),
        ("Q1w2E3r4T5y_000100_000110", 0, 2)]
    assert ann.missing == ["missing0001_000005_000015"]
    assert "1 annotated video(s) not found" in caplog.text


def test_kinetics_csv_given_class_names_and_unlabelled_rows(tmp_path):
    (tmp_path / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                       ",aaaaaaaaaaa,1,11,test\nb_c,bbbbbbbbbbb,2,12,test\n")
    touch(tmp_path / "aaaaaaaaaaa_000001_000011.mp4")
    touch(tmp_path / "bbbbbbbbbbb_000002_000012.mp4")
    ann = load_annotations(tmp_path / "test.csv", class_names=["a", "b c", "d"])
    assert [(r.label, r.class_name) for r in ann.records] == [(-1, None), (1, "b_c")]
    with pytest.raises(AnnotationError, match="'b_c' is not in"):
        load_annotations(tmp_path / "test.csv", class_names=["a"])


def test_list_file_separators_spaces_in_paths_and_folder_names(tmp_path):
    touch(tmp_path / "clips" / "arm wrestling" / "my clip 1.mp4")
    touch(tmp_path / "clips" / "bowling" / "b,2.avi")
    touch(tmp_path / "clips" / "bowling" / "c.webm")
    (tmp_path / "list.txt").write_text(
        "clips/arm wrestling/my clip 1.mp4 0\n"
        "clips/bowling/b,2.avi,1\n"
        "clips/bowling/c.webm\t1\n"
        "\n# comment\n"
        "clips/gone.mp4 1\n")
    ann = load_annotations(tmp_path / "list.txt")
    assert [(Path(r.path).name, r.label, r.source_row) for r in ann.records] == [
        ("my clip 1.mp4", 0, 0), ("b,2.avi", 1, 1), ("c.webm", 1, 2)]
    assert ann.class_names == ["arm wrestling", "bowling"]
    assert ann.missing == [str(tmp_path / "clips/gone.mp4")]


def test_list_file_without_labels_or_folder_names(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b 2.mp4")
    (tmp_path / "l.txt").write_text("a.mp4 1\nb 2.mp4\n")
    ann = parse_list_file(tmp_path / "l.txt")
    assert [r.label for r in ann.records] == [1, -1]
    assert ann.class_names == ["0", "1"]


def test_class_folders_sort_like_the_label_map_and_keep_every_extension(tmp_path):
    for cls, name in [("zumba", "a.mp4"), ("arm_wrestling", "b.mkv"), ("arm wrestling2", "c.MOV"),
                      ("Zebra", "d.webm")]:
        touch(tmp_path / cls / "sub" / name)
    (tmp_path / "zumba" / "notes.txt").write_text("not a video")
    ann = parse_class_folders(tmp_path)
    assert ann.class_names == ["Zebra", "arm_wrestling", "arm wrestling2", "zumba"]
    assert [(Path(r.path).name, r.label) for r in ann.records] == [
        ("d.webm", 0), ("b.mkv", 1), ("c.MOV", 2), ("a.mp4", 3)]


def test_non_text_annotation_is_a_clear_error(tmp_path):
    (tmp_path / "x.csv").write_bytes(bytes(range(256)))
    with pytest.raises(AnnotationError, match="not a text annotation"):
        load_annotations(tmp_path / "x.csv")
    with pytest.raises(AnnotationError, match="no such"):
        load_annotations(tmp_path / "nothing.csv")


def test_plain_folder_of_videos_is_unlabelled(tmp_path):
    touch(tmp_path / "b.mkv")
    touch(tmp_path / "a.mp4")
    (tmp_path / "README.md").write_text("notes")
    ann = load_annotations(tmp_path)
    assert [(Path(r.path).name, r.label) for r in ann.records] == [("a.mp4", -1), ("b.mkv", -1)]
    assert ann.class_names == []

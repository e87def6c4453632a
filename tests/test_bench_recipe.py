"""tools/bench_recipe.py: the shape / direction shares it reads from a run's eval_views.jsonl."""
import json

from ired_video.data.demo import demo_class_names
from tests.tool_modules import load_tool


def test_factor_shares_read_the_top_class_of_each_view(tmp_path):
    bench = load_tool("bench_recipe")
    names = demo_class_names("hard")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    index = {name: i for i, name in enumerate(names)}
    views = tmp_path / "eval_views.jsonl"
    shown = [("circle moving left", "circle moving left"), ("circle moving left", "square moving left"),
             ("triangle moving up", "triangle moving down"), ("square moving up", "circle moving down")]
    views.write_text("".join(json.dumps({"label": index[true], "top_k": [{"label": top, "index": index[top]}]}) + "\n"
                             for true, top in shown))
    assert bench.factor_shares(views, classes) == {"val_shape": 0.5, "val_direction": 0.5}
    assert bench.factor_shares(views, tmp_path / "missing.txt") == {}
    classes.write_text("walking\nrunning\n")
    assert bench.factor_shares(views, classes) == {}

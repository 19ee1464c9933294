"""The README's opening example (a pml_hyper piece inside PML losses, exact kNN metrics) runs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opening_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    namespace: dict = {}
    exec(compile(blocks[0] + blocks[1], str(README), "exec"), namespace)
    assert namespace["z"].shape == (64, 128)
    assert namespace["head"][0].weight.grad is not None
    accuracy = namespace["calculator"].get_accuracy(
        namespace["z"].detach(), namespace["labels"], ref_includes_query=True
    )
    assert set(accuracy) == {"precision_at_1", "r_precision"}

import pytest
import torch

pytest.importorskip("umap")
pytest.importorskip("matplotlib")

from pml_hyper.cli import main  # noqa: E402


def write_example(tmp_path, n=200):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (n,), generator=g)
    centres = 1.5 * torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    embeddings = centres[labels] + 0.1 * torch.randn(n, 3, generator=g)
    proxies = torch.cat([0.2 * centres[:1], centres])
    torch.save((embeddings, labels), tmp_path / "emb.pt")
    torch.save(proxies, tmp_path / "proxies.pt")
    return embeddings, labels


def test_visualize_embeddings_and_proxies_writes_a_png(tmp_path, capsys):
    write_example(tmp_path)
    out = tmp_path / "disk.png"
    argv = ["visualize", "--embeddings", str(tmp_path / "emb.pt")]
    argv += ["--proxies", str(tmp_path / "proxies.pt"), "--c", "0.1", "--out", str(out)]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "UMAP on 205 points" in printed and f"wrote {out}" in printed


def test_visualize_bad_file_is_an_error(tmp_path, capsys):
    embeddings, labels = write_example(tmp_path)
    torch.save((embeddings, labels[:-1]), tmp_path / "short.pt")
    argv = ["visualize", "--embeddings", str(tmp_path / "short.pt")]
    assert main(argv + ["--out", str(tmp_path / "x.png")]) == 2
    assert "199 labels for 200 embeddings" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

"""`unmask pretrain`: the masked-diffusion objective and a real (short) training run."""

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tests.conftest import TINY
from unmask.envs.config import EnvConfig, TaskConfig
from unmask.envs.dllm import load_dllm
from unmask.envs.pretrain.config import ModelSize, PretrainConfig
from unmask.envs.pretrain.model import new_builtin_model
from unmask.envs.pretrain.train import grow_positions, masked_diffusion_loss, pretrain


def test_loss_is_the_one_over_t_weighted_masked_cross_entropy():
    torch.manual_seed(0)
    model = new_builtin_model(8, 10, ModelSize(hidden_size=16, num_layers=1, num_heads=2, ffn_size=16),
                              {"pad": 0, "mask": 1, "eos": 2})
    ids = torch.randint(3, 8, (4, 10))
    attn = torch.ones_like(ids)
    canvas = torch.zeros_like(ids, dtype=torch.bool)
    canvas[:, 4:] = True  # 4 prompt tokens, L = 6
    loss = masked_diffusion_loss(model, ids, attn, canvas, 1, torch.Generator().manual_seed(3))
    # recompute by hand with the same random draws
    g = torch.Generator().manual_seed(3)
    t = ((torch.arange(4) + torch.rand(4, generator=g)) / 4 * (1 - 1e-3) + 1e-3)[:, None]
    masked = canvas & (torch.rand(ids.shape, generator=g) < t)
    assert not masked[:, :4].any()  # the prompt is never masked
    logits = model(input_ids=torch.where(masked, 1, ids), attention_mask=attn).logits
    total = 0.0
    for b in range(4):
        for i in range(10):
            if masked[b, i]:
                total += -torch.log_softmax(logits[b, i], -1)[ids[b, i]] / t[b, 0]
    assert loss.item() == pytest.approx(total.item() / (4 * 6), rel=1e-5)


def test_pretrain_on_jsonl_saves_a_loadable_model_and_learns(tmp_path):
    data = tmp_path / "copy.jsonl"
    rows = [{"prompt": f"{w}=", "answer": w[::-1]} for w in ("abc", "bca", "cab", "acb", "bac", "cba") * 5]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "model"
    cfg = PretrainConfig(task=TaskConfig(name="jsonl", path=str(data), test_fraction=0.0), out_dir=str(out),
                         env=EnvConfig(gen_length=6), size=TINY, batch_size=32, max_steps=120, warmup_steps=10,
                         lr=3e-3, log_every=1000, save_every_minutes=0)
    summary = pretrain(cfg)
    assert summary["steps"] == 120 and summary["final_loss_ema"] < 1.0
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["config"]["task"]["name"] == "jsonl" and "command" in meta
    tok = AutoTokenizer.from_pretrained(out)
    assert set("abc=") <= set(tok.get_vocab())
    assert AutoModelForMaskedLM.from_pretrained(out).config.max_position_embeddings == 4 + 6
    dllm = load_dllm(str(out))
    assert dllm.mask_id == tok.mask_token_id
    assert not (out.parent / "model.tmp").exists() and not (out.parent / "model.old").exists()
    # continue training the saved model: same tokenizer, weights carried over
    more = PretrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "more"), "init_from": str(out), "max_steps": 5})
    summary = pretrain(more)
    assert summary["final_loss_ema"] < 1.0
    assert summary["init_from_pretrain"]["steps"] > 0  # the recipe keeps its first stage
    assert AutoTokenizer.from_pretrained(tmp_path / "more").get_vocab() == tok.get_vocab()

    # new data with a character the model has never seen: its ids stay, the new one is appended
    data.write_text("\n".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"] + "!"}) for r in rows) + "\n")
    grown = PretrainConfig(**{**more.__dict__, "out_dir": str(tmp_path / "grown")})
    pretrain(grown)
    vocab = AutoTokenizer.from_pretrained(tmp_path / "grown").get_vocab()
    assert {k: v for k, v in vocab.items() if k != "!"} == tok.get_vocab() and vocab["!"] == len(tok)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "grown")
    assert model.get_input_embeddings().num_embeddings == len(tok) + 1
    assert load_dllm(str(tmp_path / "grown")).model(torch.tensor([[vocab["!"]] * 3])).logits.shape[-1] == len(tok) + 1

    # longer prompts than the saved context: the position table grows (rows inserted at grow_positions_at)
    data.write_text("\n".join(json.dumps({"prompt": "xy" + r["prompt"], "answer": r["answer"]}) for r in rows) + "\n")
    longer = PretrainConfig(**{**more.__dict__, "out_dir": str(tmp_path / "longer"), "grow_positions_at": 1})
    pretrain(longer)
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "longer").config.max_position_embeddings == 6 + 6
    assert json.loads((tmp_path / "longer" / "pretrain.json").read_text())["config"]["grow_positions_at"] == 1


def test_pretrain_rejects_answers_longer_than_the_canvas(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "p", "answer": "x" * 20}) + "\n")
    cfg = PretrainConfig(task=TaskConfig(name="jsonl", path=str(data), test_fraction=0.0),
                         out_dir=str(tmp_path / "m"), env=EnvConfig(gen_length=8), size=TINY, max_steps=1)
    with pytest.raises(ValueError, match="too short"):
        pretrain(cfg)


def test_grow_positions_inserts_rows_and_keeps_the_learned_ones_where_they_were():
    torch.manual_seed(0)
    model = new_builtin_model(8, 10, ModelSize(hidden_size=16, num_layers=1, num_heads=2, ffn_size=16),
                              {"pad": 0, "mask": 1, "eos": 2})
    old = model.base_model.embeddings.position_embeddings.weight.detach().clone()
    grow_positions(model, 13, at=4)  # a prompt that grew by 3 tokens in front of index 4
    new = model.base_model.embeddings.position_embeddings.weight.detach()
    assert new.shape == (13, 16) and model.config.max_position_embeddings == 13
    assert torch.equal(new[:4], old[:4]) and torch.equal(new[7:], old[4:])  # rows after the insert moved up
    assert (new[4:7] - old[3]).abs().max() < 0.2 and not torch.equal(new[4], new[5])  # near their neighbour
    ids = torch.randint(3, 8, (2, 13))
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 13, 8)
    grow_positions(model, 15)  # -1: appended at the end
    assert torch.equal(model.base_model.embeddings.position_embeddings.weight[:13], new)
    with pytest.raises(ValueError, match="grow_positions_at"):
        grow_positions(model, 20, at=99)


def test_the_learning_rate_follows_the_budget_that_ends_the_run(monkeypatch):
    """A minutes budget that ends the run long before max_steps (a slow or loaded machine): the warm-up is the same
    share of the run it would be of max_steps, the rate rises without a jump and decays to 10% at the end."""
    import unmask.envs.pretrain.train as train_module
    from unmask.envs.pretrain.train import Schedule

    clock = [1000.0]
    monkeypatch.setattr(train_module.time, "time", lambda: clock[0])
    cfg = PretrainConfig(lr=1e-3, warmup_steps=200, max_steps=100_000, max_minutes=10.0)
    schedule = Schedule(cfg)
    rates = []
    for step in range(1, 1001):  # one step a second: 600 steps in the 10 minutes, not 100,000
        clock[0] += 0.6
        rates.append(schedule.lr(step))
    assert rates[0] < 1e-5  # warming up over the run's own steps
    assert max(abs(b - a) for a, b in zip(rates, rates[1:])) < 0.02 * 1e-3  # no jump, at the warm-up's end or after
    assert max(rates) == pytest.approx(1e-3, rel=0.01) and rates[999] == pytest.approx(1e-4, rel=0.01)
    clock[0] += 0.6
    assert schedule.out_of_budget(1001)
    steps = PretrainConfig(lr=1e-3, warmup_steps=10, max_steps=100, max_minutes=1e6)
    by_steps = Schedule(steps)  # the steps end it: warm-up 10 steps, decay over 100
    assert by_steps.lr(5) == pytest.approx(5e-4, rel=0.01) and by_steps.lr(100) == pytest.approx(1e-4, rel=0.01)

"""Fine-tuning controls: a frozen body for the first epochs, then all of it trains."""

from __future__ import annotations

import torch

from compkit import _train, engine, optim
from compkit.config import Config
from tests.test_engine import Samples, classifier


def test_the_body_stays_frozen_for_freeze_epochs_then_trains(tmp_path):
    torch.manual_seed(0)
    model = classifier()
    body = _train.body_parameters(model)
    head = optim.head_parameters(model)
    assert body and head and not {id(p) for p in body} & {id(p) for p in head}
    config = Config(lr=0.05, epochs=2, weight_decay=0.1, freeze_epochs=1)
    optimizer = optim.build_optimizer(model, config)
    loader = engine.make_loader(Samples(64), batch_size=16, train=True, num_workers=0)
    schedule = optim.build_scheduler(optimizer, config, optim.optimizer_steps_per_epoch(len(loader), 1))
    start = {name: value.detach().clone() for name, value in model.named_parameters()}
    trainer = engine.Engine(model, torch.nn.CrossEntropyLoss(), optimizer, schedule, device="cpu", quiet=True,
                            frozen=body, freeze_epochs=1)
    seen = []
    valid = engine.make_loader(Samples(32, offset=1), batch_size=16, train=False, num_workers=0)

    def snapshot(epoch, metrics):
        seen.append({name: value.detach().clone() for name, value in model.named_parameters()})

    trainer.fit(loader, valid, epochs=2, score=lambda t, p: float((p.argmax(1) == t).mean()),
                on_epoch_end=snapshot, out_dir=tmp_path)
    after_1, after_2 = seen
    assert torch.equal(after_1["0.weight"], start["0.weight"]) and torch.equal(after_1["0.bias"], start["0.bias"])
    assert not torch.equal(after_1["5.weight"], start["5.weight"])  # the head trained in epoch 1
    assert not torch.equal(after_2["0.weight"], after_1["0.weight"])  # and the body from epoch 2

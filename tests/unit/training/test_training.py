"""Training pieces: parameter groups, warm-up cosine schedule, clipping, and resuming a stopped run."""

from __future__ import annotations

import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from common.training.recipe import (
    GradientClipping,
    ResumeFromLatest,
    SaveForResume,
    WarmupCosineLR,
    decay_param_groups,
    latest_checkpoint,
    warmup_cosine_lr,
)


def test_no_weight_decay_on_biases_and_one_dimensional_parameters():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = decay_param_groups(net, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}


def test_warmup_then_cosine_values():
    lr = lambda step: warmup_cosine_lr(step, 5e-4, warmup_steps=10, total_steps=110)  # noqa: E731
    assert lr(0) == pytest.approx(1e-6)
    assert lr(5) == pytest.approx(1e-6 + (5e-4 - 1e-6) * 0.5)
    assert lr(10) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * 10 / 110)))  # no restart
    assert lr(55) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6))
    assert lr(110) == pytest.approx(1e-6) and lr(500) == pytest.approx(1e-6)
    prefixed = lambda step: warmup_cosine_lr(step, 5e-4, 10, 110, warmup_prefix=True)  # noqa: E731
    assert prefixed(10) == pytest.approx(5e-4) and prefixed(60) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6))


@pytest.mark.parametrize("warmup_lr, min_lr", [(1e-6, 1e-6), (1e-7, 5e-6)])
def test_schedule_is_timms_cosine_without_warmup_prefix(warmup_lr, min_lr):
    """The authors' lr_scheduler.py: timm CosineLRScheduler(t_initial=n_steps, warmup_t, cycle_limit=1,
    t_in_epochs=False), stepped per update. Synapse: 200 epochs of 277 iterations, 10 warm-up epochs."""
    from timm.scheduler import CosineLRScheduler

    per_epoch, base = 277, 5e-4
    total, warmup = 200 * per_epoch, 10 * per_epoch
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=base)
    timm_schedule = CosineLRScheduler(
        optimizer,
        t_initial=total,
        lr_min=min_lr,
        warmup_lr_init=warmup_lr,
        warmup_t=warmup,
        cycle_limit=1,
        t_in_epochs=False,
    )
    for step in (0, 1, 500, warmup - 1, warmup, warmup + 1, 100 * per_epoch, total - 1, total, total + 50):
        timm_schedule.step_update(step)
        ours = warmup_cosine_lr(step, base, warmup, total, start_lr=warmup_lr, min_lr=min_lr)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
    if warmup_lr == 1e-6:  # the figures at epoch 100: timm 2.51e-4, the restarted cosine 2.71e-4
        assert warmup_cosine_lr(100 * per_epoch, base, warmup, total) == pytest.approx(2.505e-4, abs=1e-7)
        assert warmup_cosine_lr(100 * per_epoch, base, warmup, total, warmup_prefix=True) == pytest.approx(
            2.71e-4, abs=1e-6
        )


def test_scheduler_applies_the_schedule_to_every_group():
    net = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(decay_param_groups(net, 1e-4), lr=5e-4)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=4, total_steps=20)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, lrs in enumerate(seen):
        assert lrs == pytest.approx([warmup_cosine_lr(step, 5e-4, 4, 20)] * 2)


def toy_trainer(max_epochs: int, handlers: list, lr: float = 0.1, seed: int = 0) -> SupervisedTrainer:
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    data = [{"image": torch.randn(2, 4), "label": torch.randn(2, 2)} for _ in range(3)]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=handlers,
    )


def test_gradient_clipping_bounds_the_norm_before_the_step():
    norms = []
    trainer = toy_trainer(1, [GradientClipping(max_norm=1e-3)], lr=1.0)
    from monai.engines.utils import IterationEvents

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def record(engine):  # runs after the clipping handler, which was attached first
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in engine.network.parameters()]).item())

    trainer.run()
    assert len(norms) == 3 and max(norms) <= 1e-3 + 1e-9


def test_gradient_clipping_under_amp_unscales_before_clipping():
    """The AMP step: backward on the scaled loss, then the handler unscales before clipping, then the scaler steps.

    A CPU GradScaler (scale 1024) stands in for CUDA's; the run must end with the same weights as the unscaled run,
    and the clipped norm is measured on true gradients (clipping scaled ones would leave updates 1024x too small).
    """
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    def run(amp: bool) -> tuple[list[float], list[torch.Tensor]]:
        norms = []
        trainer = toy_trainer(1, [GradientClipping(max_norm=1e-3)], lr=1.0)
        if amp:
            trainer.amp = True
            trainer.amp_kwargs = {"enabled": False}  # autocast("cuda") has nothing to cast on CPU tensors

            @trainer.on(Events.STARTED)
            def use_a_cpu_scaler(engine):  # SupervisedTrainer.run() has just made its (CUDA) scaler
                engine.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

        @trainer.on(IterationEvents.BACKWARD_COMPLETED)
        def record(engine):  # runs after the clipping handler, which was attached first
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in engine.network.parameters()]).item())

        trainer.run()
        if amp:
            assert trainer.scaler.get_scale() == 1024.0  # no overflow skipped a step
        return norms, [p.detach().clone() for p in trainer.network.parameters()]

    amp_norms, amp_weights = run(amp=True)
    plain_norms, plain_weights = run(amp=False)
    assert len(amp_norms) == 3 and max(amp_norms) <= 1e-3 + 1e-9
    assert amp_norms == pytest.approx(plain_norms, rel=1e-5)
    for amp_weight, plain_weight in zip(amp_weights, plain_weights, strict=True):
        torch.testing.assert_close(amp_weight, plain_weight)


def test_a_stopped_run_resumes_with_epoch_count_optimizer_and_scheduler(tmp_path):
    def run(max_epochs: int, stop_after: int | None = None) -> SupervisedTrainer:
        trainer = toy_trainer(max_epochs, [])
        scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
        objects = {"network": trainer.network, "optimizer": trainer.optimizer, "lr_scheduler": scheduler}
        for handler in (
            ResumeFromLatest(tmp_path, objects),
            SaveForResume(tmp_path, objects),
            LrScheduleHandler(scheduler, print_lr=False),
        ):
            handler.attach(trainer)
        if stop_after is not None:

            @trainer.on(__import__("ignite").engine.Events.ITERATION_COMPLETED)
            def kill(engine):  # a crash in the middle of an epoch
                if engine.state.iteration == stop_after:
                    raise KeyboardInterrupt

        try:
            trainer.run()
        except KeyboardInterrupt:
            pass
        return trainer

    uninterrupted = toy_trainer(4, [])
    uninterrupted_scheduler = torch.optim.lr_scheduler.StepLR(uninterrupted.optimizer, step_size=1, gamma=0.5)
    LrScheduleHandler(uninterrupted_scheduler, print_lr=False).attach(uninterrupted)
    uninterrupted.run()

    run(4, stop_after=7)  # dies in epoch 3 after two complete epochs
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_2.pt"
    resumed = run(4)
    assert resumed.state.epoch == 4 and resumed.state.iteration == 12
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
    for a, b in zip(resumed.network.parameters(), uninterrupted.network.parameters()):
        torch.testing.assert_close(a, b)
    momentum = [resumed.optimizer.state[p]["momentum_buffer"] for p in resumed.network.parameters()]
    expected = [uninterrupted.optimizer.state[p]["momentum_buffer"] for p in uninterrupted.network.parameters()]
    for a, b in zip(momentum, expected):
        torch.testing.assert_close(a, b)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["last_checkpoint_4.pt"]

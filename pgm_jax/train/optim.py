"""Optimizer and learning-rate schedule (reference: AdamW, linear warm-up, clip 1.0)."""

from __future__ import annotations

import optax


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `lr`, then constant (the reference) or cosine to `min_lr_ratio`."""
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
    warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
    if optim_cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:  # cosine
        after = optax.cosine_decay_schedule(
            lr, max(num_steps - warmup, 1), alpha=float(optim_cfg.min_lr_ratio)
        )
    return optax.join_schedules([warm, after], [warmup])


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(schedule, b1, b2, eps, weight_decay)."""
    return optax.chain(
        optax.clip_by_global_norm(float(optim_cfg.grad_clip)),
        optax.adamw(
            learning_rate_schedule(optim_cfg, num_steps),
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
        ),
    )

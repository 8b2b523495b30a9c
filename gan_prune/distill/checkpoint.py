"""The resume checkpoint of a distillation run (resume.pt, written with every snapshot): every weight, optimiser
state, the path-length mean, the counters, and each process's RNG state and data position, so that a resumed run
continues bit for bit where the checkpoint was taken."""
from __future__ import annotations

from typing import Any

from gan_prune.distill import rundir as rd
from gan_prune.errors import GanPruneError

RESUME_FORMAT = 'gan_prune.distill.resume.v1'


def resume_state(trainer: Any) -> dict:
    """The checkpoint of `trainer` (a gan_prune.distill.trainer.Trainer after setup). Collective: every process
    must call it (each contributes its RNG state and data position)."""
    per_process = trainer.dist.gather_objects({'rng': rd.get_rng_state(trainer.device),
                                               'data': trainer.source.state_dict()})
    return {
        'format': RESUME_FORMAT,
        'cur_nimg': trainer.cur_nimg, 'cur_tick': trainer.cur_tick, 'batch_idx': trainer.batch_idx,
        'elapsed': trainer.elapsed, 'world': trainer.world,
        'G': trainer.G_s.state_dict(), 'G_ema': trainer.G_ema.state_dict(), 'D': trainer.D_s.state_dict(),
        'D_teacher': trainer.D_t.state_dict() if trainer.D_t is not None else None,
        'kd_terms': {name: term.state_dict() for name, term in trainer.loss.trainable_terms().items()},
        'path_length': trainer.loss.path_length.state_dict(),
        'opt_G': trainer.opt_G.state_dict(), 'opt_D': {k: o.state_dict() for k, o in trainer.opt_D.items()},
        'processes': per_process,
    }


def load_resume(trainer: Any, resume_dir: str) -> list:
    """Load the checkpoint of `resume_dir` into `trainer` (networks, optimisers, counters); returns the
    per-process states (RNG, data position), restored as the last step of setup."""
    state = rd.load_resume(resume_dir)
    if state.get('format') != RESUME_FORMAT:
        raise GanPruneError(f'{resume_dir}/{rd.RESUME_FILE} has an unknown format; start a new run')
    try:
        trainer.G_s.load_state_dict(state['G'])
        trainer.G_ema.load_state_dict(state['G_ema'])
        trainer.D_s.load_state_dict(state['D'])
        if trainer.D_t is not None:
            trainer.D_t.load_state_dict(state['D_teacher'])
        for name, term in trainer.loss.trainable_terms().items():
            if 'kd_terms' in state:
                term.load_state_dict(state['kd_terms'][name])
            else:  # checkpoints written before the KD terms had a registry
                term.nickel.load_state_dict(state['nickel'])
        trainer.loss.path_length.load_state_dict(state['path_length'])
        trainer.opt_G.load_state_dict(state['opt_G'])
        for k, opt in trainer.opt_D.items():
            opt.load_state_dict(state['opt_D'][k])
    except (RuntimeError, KeyError, ValueError) as e:
        raise GanPruneError(f'{resume_dir}/{rd.RESUME_FILE} does not match the networks of this run '
                            f'({type(e).__name__}); resume with the original teacher and student files') from e
    trainer.cur_nimg, trainer.cur_tick = int(state['cur_nimg']), int(state['cur_tick'])
    trainer.batch_idx, trainer.elapsed = int(state['batch_idx']), float(state['elapsed'])
    if int(state['world']) != trainer.world:
        trainer.log(f'Note: the run used {state["world"]} processes and now {trainer.world}; training continues '
                    f'but not bit-identically')
    return state['processes']

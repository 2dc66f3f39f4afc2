"""SpecAugment on the log-mel (speech_input.SpecAugment): bounds, fill value, determinism."""

import jax
import jax.numpy as jnp
import numpy as np

from glmvoice_jax.data.speech_input import SpecAugment

LENGTHS = (300, 150, 40, 0)  # the last row is all padding (an eval dummy row)


def _inputs():
    rng = np.random.default_rng(0)
    mel = jnp.asarray(rng.normal(size=(len(LENGTHS), 300, 128)) + 1.0, jnp.float32)
    mask = jnp.arange(300)[None, :] < jnp.asarray(LENGTHS)[:, None]
    return mel, mask


def test_masks_stay_in_bounds_and_fill_with_the_utterance_mean():
    mel, mask = _inputs()
    aug = SpecAugment(freq_masks=2, freq_width=27, time_masks=2, time_width=20, time_frac=0.1)
    out = np.asarray(jax.jit(aug)(mel, mask, jax.random.key(0)))
    assert np.array_equal(out, np.asarray(aug(mel, mask, jax.random.key(0))))  # same key, same
    assert not np.array_equal(out, np.asarray(aug(mel, mask, jax.random.key(1))))
    changed = out != np.asarray(mel)
    for b, n in enumerate(LENGTHS):
        whole_bins = changed[b, :n].all(axis=0) if n else np.zeros(128, bool)
        assert whole_bins.sum() <= 2 * 27  # at most two bands of <= 27 bins
        assert not changed[b, n:].any()  # padding frames are left alone
        time_rows = changed[b].all(axis=1)
        assert time_rows.sum() <= 2 * min(20, int(0.1 * n))
        if n:
            mean = float(np.asarray(mel)[b, :n].mean())
            np.testing.assert_allclose(out[b][changed[b]], mean, rtol=1e-5)
    assert changed[0].any() and changed[1].any()


def test_off_is_the_identity():
    mel, mask = _inputs()
    assert not SpecAugment().enabled
    assert SpecAugment()(mel, mask, jax.random.key(0)) is mel

"""Streaming per-feature statistics: exact top-k, interval-band samples, density, histogram.

`FeatureStats.update(z, index)` takes one batch of latents z [batch, d_sae] with the global
store index of each row and updates every feature at once; nothing is kept per token. Memory
is O(d_sae × hist_bins × k), independent of the number of tokens. All work after the dense
mask is done on the (feature, token) pairs where z > 0, so the cost per batch is the encoder's
output plus O(nnz), not O(d_sae) Python work: there is no per-feature loop anywhere.

Definitions (the analysis file documents the same):

- top-k: the k pairs with the largest z > 0, ties broken by the smaller global index. Exact.
- histogram: `hist_bins` (H) equal bins over [0, R) where R = 2^e is the smallest power of two
  strictly greater than the feature's maximum. While streaming, R starts at the first batch
  maximum and doubles as the maximum grows; doubling merges bins 2j and 2j+1 exactly (counts add),
  so the final histogram equals a histogram computed afterwards with the final R.
- interval bands (Scaling Monosemanticity): Q bands spaced evenly between 0 and the maximum M.
  Histogram bin b (centre (b + ½)R/H) belongs to band ⌊centre / M · Q⌋, so band edges are bin
  edges, within R/2H ≤ M/H of the ideal q·M/Q; `band_lower`/`band_upper` record the edges used.
  Each band holds a uniform random sample (without replacement) of k of its tokens: every pair
  gets a pseudo-random key (a bijective hash of its token index, salted per feature), and the
  band keeps its k smallest keys. While streaming, every (feature, bin) cell keeps at least its
  k smallest keys (a bottom-k sketch); bottom-k sketches merge exactly (the k smallest of a
  union are among the k smallest of each part), so cells can merge when the range doubles and
  bands are assembled from cells at the end, whatever the batch order. Deterministic.

Implementation of the sketches: an append-only log of candidate pairs (feature, value, token,
key). A pair is appended only if its key is below its cell's threshold (the k-th smallest key
the cell held at the last compaction; any upper bound of it is safe). When the log is full it is
compacted: sorted by (cell, key) and cut to k per cell. A pair's cell is recomputed from its
value with the feature's current range, so doubling never touches the log (⌊v·H/2^e⌋ >> s =
⌊v·H/2^(e+s)⌋). Per batch this is a few vectorised passes over the non-zero pairs, no sort.
"""

from __future__ import annotations

import torch

from sae_kit.analysis.selection import (
    KEY_SPACE,
    best_per_group,
    descending_value_key,
    feature_salts,
    positive_pairs,
    rank_in_runs,
    sample_keys,
    select_bottom_k,
    take,
    token_keys,
    torch_threads,
    true_indices,
)

__all__ = ["FeatureStats", "bands_of_bins", "band_edges", "exponent_above", "feature_salts", "histogram_bin",
           "sample_keys"]

UNSET_EXPONENT = -(1 << 20)
"""Histogram exponent of a feature that has not fired yet."""


# ----------------------------------------------------------------------------- binning


def histogram_bin(values: torch.Tensor, exponent: torch.Tensor, hist_bins: int) -> torch.Tensor:
    """Bin of each value in H equal bins over [0, 2^exponent): [n] float, [n] int -> [n] int64.

    ⌊v · (H · 2^-e)⌋, clamped to H − 1; H · 2^-e is a power of two, so the product is exact."""
    return (values.float() * bin_scale(exponent, hist_bins)).long().clamp_(max=hist_bins - 1)


def bin_scale(exponent: torch.Tensor, hist_bins: int) -> torch.Tensor:
    """H · 2^-e as float32 (exact): multiplying a value by it gives its bin position. [n] -> [n]."""
    return torch.ldexp(torch.full(exponent.shape, float(hist_bins), device=exponent.device), -exponent.clamp(-126, 126))


def exponent_above(values: torch.Tensor) -> torch.Tensor:
    """e such that 2^e is the smallest power of two strictly greater than each value > 0. [n] -> [n]."""
    return torch.frexp(values.float()).exponent.long()


# ----------------------------------------------------------------------------- the accumulator


class FeatureStats:
    """Accumulates per-feature statistics of latents z over a stream of batches (see module doc).

    Usage::

        stats = FeatureStats(d_sae, top_k=20, n_quantiles=10)
        for z, index in batches:        # z [b, d_sae], index [b] global token indices, ascending
            stats.update(z, index)
        tensors = stats.finalize()      # {"top_values": [d_sae, k], ...}

    Rows must arrive in increasing global index (store order): ties at the top-k threshold are
    then resolved without looking back. Memory: O(d_sae · (H + k)) for the statistics plus the
    log of candidate pairs (24 bytes each): it starts at 4M entries (96 MB) and grows only while
    the cells are still filling, to ~4 · d_sae · H · k entries at worst.
    """

    def __init__(self, d_sae: int, top_k: int = 20, n_quantiles: int = 10, hist_bins: int = 64, device=None,
                 threads: int | None = 1, initial_log: int = 1 << 22):
        if top_k < 1 or n_quantiles < 1:
            raise ValueError("top_k and n_quantiles must be at least 1")
        if hist_bins < 2 * n_quantiles or hist_bins & (hist_bins - 1):
            raise ValueError("hist_bins must be a power of two and at least 2 × n_quantiles")
        self.d_sae, self.k, self.n_quantiles, self.hist_bins = d_sae, top_k, n_quantiles, hist_bins
        # The bookkeeping is many small memory-bound ops: on CPU one thread beats a team, whose
        # fork/join costs more than it saves (ten times more on a loaded machine).
        self.threads = threads
        self.device = device = torch.device(device or "cpu")
        F, H, k = d_sae, hist_bins, top_k
        self.n_tokens = 0
        self.last_index = -1
        self.fire_count = torch.zeros(F, dtype=torch.int64, device=device)
        self.act_sum = torch.zeros(F, dtype=torch.float64, device=device)
        self.max_activation = torch.zeros(F, dtype=torch.float32, device=device)
        self.top_values = torch.zeros(F, k, dtype=torch.float32, device=device)
        self.top_indices = torch.full((F, k), -1, dtype=torch.int64, device=device)
        self.top_threshold = torch.zeros(F, dtype=torch.float32, device=device)  # = top_values[:, -1]
        self.exponent = torch.full((F,), UNSET_EXPONENT, dtype=torch.int64, device=device)
        self.scale = bin_scale(self.exponent, H)  # H · 2^-e per feature
        self.hist_counts = torch.zeros(F * H, dtype=torch.int64, device=device)
        self.cell_threshold = torch.full((F * H,), KEY_SPACE, dtype=torch.int64, device=device)
        self.cell_logged = torch.zeros(F * H, dtype=torch.int64, device=device)  # log entries per cell
        self.salts = feature_salts(F, device)
        self.log_len = 0
        self.log = self._empty_log(min(initial_log, 2 * F * H * k))

    def _empty_log(self, capacity: int) -> dict[str, torch.Tensor]:
        d = self.device
        return {"feature": torch.empty(capacity, dtype=torch.int32, device=d),
                "value": torch.empty(capacity, dtype=torch.float32, device=d),
                "token": torch.empty(capacity, dtype=torch.int64, device=d),
                "key": torch.empty(capacity, dtype=torch.int64, device=d)}

    # -- streaming ---------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, z: torch.Tensor, index: torch.Tensor) -> None:
        """Add a batch: z [b, d_sae] latents, index [b] int64 global token indices (ascending)."""
        if z.dim() != 2 or z.shape[1] != self.d_sae:
            raise ValueError(f"z must be [batch, {self.d_sae}], got {tuple(z.shape)}")
        if len(index) == 0:
            return
        index = index.to(self.device, torch.int64)
        if int(index[0]) <= self.last_index or bool((index[1:] <= index[:-1]).any()):
            raise ValueError("rows must arrive in increasing global index order")
        self.n_tokens += z.shape[0]
        self.last_index = int(index[-1])
        z = z.to(self.device)
        flat = positive_pairs(z).to(self.device)
        if flat.numel():
            with torch_threads(self.threads if self.device.type == "cpu" else None):
                self._update_pairs(z, flat, index)

    def _update_pairs(self, z: torch.Tensor, flat: torch.Tensor, index: torch.Tensor) -> None:
        """The bookkeeping for the non-zero pairs (flat indices [nnz] into z [b, F])."""
        F, H = self.d_sae, self.hist_bins
        row = torch.div(flat, F, rounding_mode="floor")
        feature = flat - row * F
        value = take(z.reshape(-1), flat).float()

        self.fire_count += torch.bincount(feature, minlength=F)
        self.act_sum += torch.bincount(feature, weights=value, minlength=F).double()
        batch_max = torch.zeros(F, dtype=torch.float32, device=self.device)
        batch_max.scatter_reduce_(0, feature, value, reduce="amax")
        self.max_activation = torch.maximum(self.max_activation, batch_max)
        self._grow_ranges(batch_max)

        bin_ = (value * take(self.scale, feature)).long().clamp_(max=H - 1)  # = histogram_bin(value, e[feature], H)
        cell = feature * H + bin_
        batch_counts = torch.bincount(cell, minlength=F * H)
        self.hist_counts += batch_counts
        self._update_top(feature, value, bin_, row, index, batch_counts)

        key = take(token_keys(index), row) ^ take(self.salts, feature)  # = sample_keys(index[row], feature)
        keep = key < take(self.cell_threshold, cell)
        if bool(keep.all()):
            added = batch_counts
        else:
            keep = true_indices(keep)
            feature, value, row, key = take(feature, keep), take(value, keep), take(row, keep), take(key, keep)
            added = torch.bincount(take(cell, keep), minlength=F * H)
        self._append(feature, value, take(index, row), key)  # may compact the log first
        self.cell_logged += added

    def _update_top(self, feature, value, bin_, row, index, batch_counts) -> None:
        """Merge the pairs that beat their feature's current k-th value into its top-k.

        Only pairs in the bins holding the batch's k largest values of their feature can enter
        (bins are ordered by value), which keeps the candidates few from the first batch on.
        Candidates arrive in index order and stored entries precede them (smaller indices), so a
        stable sort by value alone breaks ties by the smaller index."""
        k, H = self.k, self.hist_bins
        from_top = batch_counts.reshape(-1, H).flip(1).cumsum(1)  # [F, H]: count in the top j+1 bins
        lowest_bin = H - 1 - (from_top < k).sum(1)  # [F]: bins below it hold no batch top-k value
        new = true_indices((bin_ >= take(lowest_bin, feature)) & (value > take(self.top_threshold, feature)))
        if new.numel() == 0:
            return
        keep, group, rank = best_per_group(take(feature, new), descending_value_key(take(value, new)), k)
        pick = take(new, keep)
        first = rank == 0
        touched = group[first]  # sorted, unique
        slot = first.cumsum(0) - 1
        fresh_values = torch.zeros(len(touched), k, device=self.device)
        fresh_tokens = torch.full((len(touched), k), -1, dtype=torch.int64, device=self.device)
        fresh_values[slot, rank] = take(value, pick)
        fresh_tokens[slot, rank] = take(index, take(row, pick))
        values = torch.cat([take(self.top_values, touched), fresh_values], 1)  # [t, 2k]; empty slots hold 0
        tokens = torch.cat([take(self.top_indices, touched), fresh_tokens], 1)
        order = torch.sort(descending_value_key(values), dim=1, stable=True).indices[:, :k]
        self.top_values[touched] = best = values.gather(1, order)
        self.top_indices[touched] = tokens.gather(1, order)
        self.top_threshold[touched] = best[:, -1]

    def _append(self, feature, value, token, key) -> None:
        """Append candidate pairs (all [n]) to the log, compacting or growing it when full."""
        n = feature.numel()
        if self.log_len + n > self.log["key"].numel():
            # Compact only if that frees at least half the log (entries beyond k in their cell);
            # otherwise (cells still filling) grow it: the log stays below ~4 · d_sae · H · k.
            surplus = int((self.cell_logged - self.k).clamp(min=0).sum())
            if 2 * surplus >= self.log_len:
                self._compact()
            if self.log_len + n > self.log["key"].numel() // 2:
                grown = self._empty_log(max(2 * self.log["key"].numel(), 2 * (self.log_len + n)))
                for name, column in self.log.items():
                    grown[name][: self.log_len] = column[: self.log_len]
                self.log = grown
        end = self.log_len + n
        self.log["feature"][self.log_len : end] = feature
        self.log["value"][self.log_len : end] = value
        self.log["token"][self.log_len : end] = token
        self.log["key"][self.log_len : end] = key
        self.log_len = end

    def _log_cells(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Current cell of every log entry (from its value and the feature's range) and the entries."""
        entries = {name: column[: self.log_len] for name, column in self.log.items()}
        feature = entries["feature"].long()
        bins = (entries["value"] * take(self.scale, feature)).long().clamp_(max=self.hist_bins - 1)
        return feature * self.hist_bins + bins, entries

    def _compact(self) -> None:
        """Cut the log to the k smallest keys of every cell; refresh the cell thresholds."""
        cells, entries = self._log_cells()
        calm, chosen, group, rank = select_bottom_k(cells, entries["key"], self.cell_logged, self.k)
        full = true_indices(rank == self.k - 1)  # cells that had more than k: threshold = k-th key
        self.cell_threshold.fill_(KEY_SPACE)
        self.cell_threshold[take(group, full)] = take(entries["key"], take(chosen, full))
        keep = torch.cat([calm, chosen])
        n = keep.numel()
        for name, column in entries.items():
            self.log[name][:n] = take(column, keep)
        self.log_len = n
        self.cell_logged.clamp_(max=self.k)

    def _grow_ranges(self, batch_max: torch.Tensor) -> None:
        """Raise each feature's histogram range R = 2^e above its new maximum. Bins of a feature
        whose range doubles s times merge (b -> b >> s): counts add; a merged cell's threshold
        becomes the largest of its parts' (an upper bound of its k-th smallest key: safe)."""
        needed = torch.where(batch_max > 0, exponent_above(batch_max), UNSET_EXPONENT)
        new_exponent = torch.maximum(self.exponent, needed)
        shift = new_exponent - self.exponent
        changed = shift > 0
        grow = (changed & (self.exponent != UNSET_EXPONENT)).nonzero().squeeze(1)
        self.exponent = new_exponent
        self.scale[changed] = bin_scale(new_exponent[changed], self.hist_bins)
        if grow.numel() == 0:
            return
        H = self.hist_bins
        bins = torch.arange(H, device=self.device)
        cells = (grow[:, None] * H + bins).reshape(-1)  # [g·H]
        merged = (grow[:, None] * H + (bins >> shift[grow].clamp(max=63)[:, None])).reshape(-1)
        for tally in (self.hist_counts, self.cell_logged):
            counts = tally[cells]
            tally[cells] = 0
            tally.index_add_(0, merged, counts)
        thresholds = self.cell_threshold[cells]
        self.cell_threshold[cells] = KEY_SPACE  # bins above the merged ones are empty
        self.cell_threshold.scatter_reduce_(0, merged, thresholds, reduce="amax", include_self=False)

    # -- results -----------------------------------------------------------------------------

    @torch.no_grad()
    def finalize(self) -> dict[str, torch.Tensor]:
        """The statistics as CPU tensors (shapes with F = d_sae, k, Q = n_quantiles, H = hist_bins):

        fire_count [F] int64, density [F], max_activation [F], mean_nonzero [F],
        top_values / top_indices [F, k], hist_counts [F, H] int64, hist_upper [F] (R; 0 if dead),
        band_values / band_indices [F, Q, k] (by value, descending; then token index),
        band_counts [F, Q] int64, band_lower / band_upper [F, Q] (the edges used; 0 if dead).
        """
        with torch_threads(self.threads if self.device.type == "cpu" else None):
            return self._finalize()

    def _finalize(self) -> dict[str, torch.Tensor]:
        F, H, Q, k = self.d_sae, self.hist_bins, self.n_quantiles, self.k
        alive = self.exponent != UNSET_EXPONENT
        upper = torch.where(alive, torch.ldexp(torch.ones(F, device=self.device), self.exponent.clamp(-126, 126)),
                            torch.zeros(F, device=self.device))
        band_of_bin = bands_of_bins(upper, self.max_activation, H, Q)  # [F, H]
        band_of_cell = (torch.arange(F, device=self.device)[:, None] * Q + band_of_bin).reshape(-1)  # [F·H]
        band_counts = torch.zeros(F * Q, dtype=torch.int64, device=self.device)
        band_counts.index_add_(0, band_of_cell, self.hist_counts)
        # Each band's sample: the k smallest keys among the log entries of its cells.
        cells, entries = self._log_cells()
        band = take(band_of_cell, cells)
        band_logged = torch.zeros(F * Q, dtype=torch.int64, device=self.device)
        band_logged.index_add_(0, band_of_cell, self.cell_logged)
        calm, chosen, _, _ = select_bottom_k(band, entries["key"], band_logged, k)
        keep = torch.cat([calm, chosen])
        token, value = take(entries["token"], keep), take(entries["value"], keep)
        group, order = torch.sort(take(band, keep), stable=True)
        token, value = take(token, order), take(value, order)
        band_values = torch.zeros(F * Q, k, device=self.device)
        band_indices = torch.full((F * Q, k), -1, dtype=torch.int64, device=self.device)
        rank = rank_in_runs(group)
        band_values[group, rank] = value
        band_indices[group, rank] = token
        # Present each sample by value (descending), then token index; empty slots last.
        order = torch.sort(torch.where(band_indices >= 0, band_indices, torch.iinfo(torch.int64).max), dim=1).indices
        band_values, band_indices = band_values.gather(1, order), band_indices.gather(1, order)
        order = torch.sort(descending_value_key(band_values), dim=1, stable=True).indices
        band_values, band_indices = band_values.gather(1, order), band_indices.gather(1, order)
        lower, upper_edge = band_edges(upper, band_of_bin, self.max_activation, H, Q)
        out = {
            "fire_count": self.fire_count,
            "density": (self.fire_count.double() / max(self.n_tokens, 1)).float(),
            "max_activation": self.max_activation,
            "mean_nonzero": (self.act_sum / self.fire_count.clamp(min=1)).float(),
            "top_values": self.top_values,
            "top_indices": self.top_indices,
            "hist_counts": self.hist_counts.reshape(F, H),
            "hist_upper": upper,
            "band_values": band_values.reshape(F, Q, k),
            "band_indices": band_indices.reshape(F, Q, k),
            "band_counts": band_counts.reshape(F, Q),
            "band_lower": lower,
            "band_upper": upper_edge,
        }
        return {name: t.detach().cpu().contiguous() for name, t in out.items()}


def bands_of_bins(upper: torch.Tensor, maximum: torch.Tensor, hist_bins: int, n_quantiles: int) -> torch.Tensor:
    """Band of every histogram bin: ⌊(b + ½)·R/H / M · Q⌋ clamped to [0, Q − 1]. [F], [F] -> [F, H] int64.

    Computed in float64; bins of a dead feature (M = 0) all map to band 0 (and are empty)."""
    centre = (torch.arange(hist_bins, device=upper.device, dtype=torch.float64) + 0.5) / hist_bins
    ratio = centre[None, :] * upper.double()[:, None] / maximum.double().clamp(min=1e-300)[:, None]
    return (ratio * n_quantiles).floor().clamp(0, n_quantiles - 1).long()


def band_edges(upper, band_of_bin, maximum, hist_bins: int, n_quantiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper activation edge of each band [F, Q]: the outer edges of its bins, the top
    band's upper edge clamped to the maximum (the top band includes it)."""
    F = upper.shape[0]
    width = (upper / hist_bins)[:, None]
    bins = torch.arange(hist_bins, device=upper.device)[None, :].expand(F, -1)
    big = torch.full((F, n_quantiles), hist_bins, dtype=torch.int64, device=upper.device)
    first = big.scatter_reduce(1, band_of_bin, bins, reduce="amin")
    last = torch.full_like(big, -1).scatter_reduce(1, band_of_bin, bins, reduce="amax")
    lower = first.float() * width
    upper_edge = torch.minimum((last + 1).float() * width, maximum[:, None])
    return lower, upper_edge

/** Small statistics helpers. */

/** min / median / max of a list of figures (empty → NaN). */
export interface Summary {
  readonly min: number;
  readonly median: number;
  readonly max: number;
  /** Every per-round figure, in round order. */
  readonly samples: readonly number[];
}

/** Summarizes per-round samples. */
export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return { min: Number.NaN, median: Number.NaN, max: Number.NaN, samples };
  return { min: s[0] as number, median: quantileSorted(s, 0.5), max: s[s.length - 1] as number, samples };
}

/** The `q` quantile (0..1) of an ascending list, linear interpolation. */
export function quantileSorted(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (pos - lo);
}

/** Percentiles of a float array (sorted in place). */
export function percentiles(values: Float64Array, qs: readonly number[]): number[] {
  values.sort();
  const arr = values as unknown as number[];
  return qs.map((q) => quantileSorted(arr, q));
}

/** Formats a figure compactly for a table. */
export function fmt(n: number, unit: string): string {
  if (!Number.isFinite(n)) return '–';
  if (unit === 'msg/s') {
    if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
    if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(2)}k`;
    return n.toFixed(0);
  }
  if (unit === 'B/msg') return n.toFixed(0);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

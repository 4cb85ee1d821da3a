/**
 * Offset bookkeeping of one partition: which handed-over records are settled, the contiguous
 * prefix that may be committed, and (ordered subscriptions) the hand-over counts of in-place retries committed with it.
 * @internal
 */
import { formatAttemptsMetadata } from './wire.js';

/** Handed-over offsets of one partition and what may be committed. */
export class PartitionTrack {
  /** Handed-over offsets not yet part of the committable prefix, ascending; `head` is the first. */
  private pending: bigint[] = [];
  private head = 0;
  /** Settled offsets still behind an unsettled one. */
  private readonly settledAhead = new Set<bigint>();
  /**
   * Ordered subscriptions: the next hand-over count of records retried in place, committed as offset
   * metadata so that a restart (another member, a crash) resumes the count instead of starting at 1.
   */
  readonly attempts = new Map<bigint, number>();
  /** Hand-over counts read from the committed metadata when this member got the partition. */
  restored: Map<bigint, number> | undefined;
  /** `attempts` changed since the last commit. */
  attemptsDirty = false;
  /** Offset after the last record handed over (records below it are never handed again). */
  nextHand: bigint | undefined;
  /** Offset to commit: every record below it is settled. */
  committable: bigint | undefined;
  /** Last offset committed by this member. */
  committed: bigint | undefined;

  constructor(
    readonly topic: string,
    readonly partition: number,
  ) {}

  handed(offset: bigint): void {
    this.pending.push(offset);
    this.nextHand = offset + 1n;
  }

  /** Ordered retry in place: `offset` comes back, as its hand-over number `next`. */
  retrying(offset: bigint, next: number): void {
    this.attempts.set(offset, next);
    this.attemptsDirty = true;
  }

  done(offset: bigint): void {
    if (this.attempts.delete(offset)) this.attemptsDirty = true;
    this.restored?.delete(offset);
    if (this.head >= this.pending.length) return;
    const first = this.pending[this.head] as bigint;
    if (offset < first) return; // settled before (already in the committable prefix)
    if (offset !== first) {
      this.settledAhead.add(offset);
      return;
    }
    this.committable = offset + 1n;
    this.head++;
    for (let next = this.pending[this.head]; next !== undefined && this.settledAhead.delete(next); next = this.pending[this.head]) {
      this.committable = next + 1n;
      this.head++;
    }
    if (this.head === this.pending.length) {
      this.pending = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
  }

  get needsCommit(): boolean {
    if (this.attemptsDirty) return this.commitOffset !== undefined;
    return this.committable !== undefined && (this.committed === undefined || this.committable > this.committed);
  }

  /** Offset to commit: after the settled prefix, else the first record handed over (nothing below it is pending). */
  get commitOffset(): bigint | undefined {
    return this.committable ?? this.pending[this.head];
  }

  /** Metadata for the next commit: the hand-over counts of records at or after the commit offset. */
  commitMetadata(): string | undefined {
    if (this.attempts.size === 0) return undefined;
    return formatAttemptsMetadata(this.attempts, this.commitOffset ?? 0n);
  }
}

/** Key of a partition's track. */
export const trackKey = (topic: string, partition: number): string => `${partition}|${topic}`;

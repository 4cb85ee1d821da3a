/**
 * A FIFO with O(1) amortized `push`, `shift` and (after a `shift`) `unshift`, for the broker's group
 * queues and topic logs: `Array.prototype.shift` moves every element of the large arrays a backlog
 * makes (V8 trims in place only arrays outside its large-object space), so each delivery from a
 * backlog of 20k cost a copy of the whole backlog.
 *
 * Items live in `items[head..]`; the consumed prefix is dropped once it is at least half of the
 * array, so the memory held stays proportional to the items in the queue.
 */
export class Deque<T> {
  private items: (T | undefined)[];
  private head = 0;

  /** @param items - initial items, front first (the array is taken over, not copied). */
  constructor(items: T[] = []) {
    this.items = items;
  }

  /** Number of items. */
  get length(): number {
    return this.items.length - this.head;
  }

  /** The `i`-th item from the front (0-based). */
  at(i: number): T {
    return this.items[this.head + i] as T;
  }

  /** Appends at the back. */
  push(item: T): void {
    this.items.push(item);
  }

  /** Inserts at the front. */
  unshift(item: T): void {
    if (this.head > 0) this.items[--this.head] = item;
    else this.items.unshift(item);
  }

  /** Removes and returns the front item. */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head] as T;
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Removes and returns the `i`-th item from the front. */
  removeAt(i: number): T {
    if (i === 0) return this.shift() as T;
    return this.items.splice(this.head + i, 1)[0] as T;
  }

  /** Inserts `item` so that it becomes the `i`-th item from the front. */
  insertAt(i: number, item: T): void {
    if (i === 0) this.unshift(item);
    else this.items.splice(this.head + i, 0, item);
  }

  /** Index (from the front) of the first item `match` accepts, or -1. */
  findIndex(match: (item: T) => boolean): number {
    for (let i = this.head; i < this.items.length; i++) if (match(this.items[i] as T)) return i - this.head;
    return -1;
  }

  /** The items, front first, as a new array. */
  toArray(): T[] {
    return this.items.slice(this.head) as T[];
  }
}

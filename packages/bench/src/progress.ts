/**
 * A single-line progress bar on stderr (redrawn in place on a TTY; on a pipe, a plain line every
 * 10 % so logs stay short). stdout stays clean for the Markdown table.
 */
export class Progress {
  private done = 0;
  private lastPrinted = -1;
  private readonly tty = process.stderr.isTTY === true;
  private readonly started = Date.now();
  private label = '';

  constructor(private total: number) {}

  /** Adds work discovered later (e.g. after a broker was found). */
  grow(n: number): void {
    this.total += n;
    this.draw();
  }

  /** Names the step now running. */
  step(label: string): void {
    this.label = label;
    this.draw();
  }

  /** Marks `n` steps done. */
  tick(n = 1): void {
    this.done += n;
    this.draw();
  }

  /** Prints a message above the bar. */
  log(message: string): void {
    if (this.tty) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`${message}\n`);
    this.draw(true);
  }

  /** Clears the bar. */
  finish(): void {
    if (this.tty) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`bench: ${this.done}/${this.total} steps in ${((Date.now() - this.started) / 1000).toFixed(0)} s\n`);
  }

  private draw(force = false): void {
    const total = Math.max(1, this.total);
    const pct = Math.min(100, Math.floor((this.done / total) * 100));
    const elapsed = (Date.now() - this.started) / 1000;
    if (this.tty) {
      const width = 28;
      const fill = Math.round((pct / 100) * width);
      const eta = this.done > 0 ? ((elapsed / this.done) * (total - this.done)).toFixed(0) : '?';
      const cols = process.stderr.columns ?? 120;
      const line = `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${String(pct).padStart(3)}% ${elapsed.toFixed(0)}s eta ${eta}s  ${this.label}`;
      process.stderr.write(`\r\x1b[2K${line.slice(0, cols - 1)}`);
    } else if (force || Math.floor(pct / 10) !== Math.floor(this.lastPrinted / 10)) {
      this.lastPrinted = pct;
      process.stderr.write(`bench: ${pct}% (${this.done}/${total}) ${elapsed.toFixed(0)}s ${this.label}\n`);
    }
  }
}

/**
 * Plain ANSI output for `aios top`: the alternate screen, a hidden cursor, and redraws that rewrite
 * only the lines that changed since the last frame (no clear, so no flicker), each frame inside a
 * synchronized-update bracket (terminals without it ignore it).
 */
export const ENTER = '\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J';
export const LEAVE = '\x1b[?2026l\x1b[0m\x1b[?25h\x1b[?1049l';

export class Frame {
  private prev: string[] = [];
  private size = '';

  /** The bytes that turn the last frame into `lines` (already exactly the terminal's width each). */
  diff(lines: string[], width: number, height: number): string {
    let out = '\x1b[?2026h';
    const size = `${width}x${height}`;
    if (size !== this.size) {
      out += '\x1b[H\x1b[2J';
      this.prev = [];
      this.size = size;
    }
    for (let i = 0; i < height; i++) {
      const line = lines[i] ?? '';
      if (this.prev[i] === line) continue;
      out += `\x1b[${i + 1};1H${line}\x1b[0m`;
      if (!line) out += '\x1b[K';
    }
    this.prev = lines.slice(0, height);
    return out + '\x1b[H\x1b[?2026l';
  }

  /** Forget the last frame: the next one is drawn whole. */
  reset(): void {
    this.size = '';
  }
}

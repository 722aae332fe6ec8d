// A picture drawn in the terminal: each character cell shows two pixels, the upper as the foreground colour of '▀'
// and the lower as the background (24-bit ANSI colours), after an area-average downscale to the cells available.
import type { Picture } from '../../pipelines/generate.ts';

/** Area-averaged downscale of an NHWC [0,1] picture to w x h. */
export function downscale(pic: Picture, w: number, h: number): Float32Array {
  const out = new Float32Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const y0 = Math.floor((y * pic.height) / h);
    const y1 = Math.max(y0 + 1, Math.floor(((y + 1) * pic.height) / h));
    for (let x = 0; x < w; x++) {
      const x0 = Math.floor((x * pic.width) / w);
      const x1 = Math.max(x0 + 1, Math.floor(((x + 1) * pic.width) / w));
      const n = (y1 - y0) * (x1 - x0);
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) s += pic.data[(yy * pic.width + xx) * 3 + c];
        out[(y * w + x) * 3 + c] = s / n;
      }
    }
  }
  return out;
}

const byte = (v: number) => Math.max(0, Math.min(255, Math.round(v * 255)));

/** Lines of ANSI text showing `pic` in at most `cols` columns and `rows` text rows, keeping its aspect ratio. */
export function pictureLines(pic: Picture, cols: number, rows: number): string[] {
  const scale = Math.min(cols / pic.width, (2 * rows) / pic.height, 1);
  const w = Math.max(1, Math.floor(pic.width * scale));
  const h = Math.max(2, Math.floor((pic.height * scale) / 2) * 2);
  const px = downscale(pic, w, h);
  const lines: string[] = [];
  for (let y = 0; y < h; y += 2) {
    let line = '';
    for (let x = 0; x < w; x++) {
      const t = (y * w + x) * 3;
      const b = ((y + 1) * w + x) * 3;
      line += `\x1b[38;2;${byte(px[t])};${byte(px[t + 1])};${byte(px[t + 2])}m\x1b[48;2;${byte(px[b])};${byte(px[b + 1])};${byte(px[b + 2])}m▀`;
    }
    lines.push(`${line}\x1b[0m`);
  }
  return lines;
}

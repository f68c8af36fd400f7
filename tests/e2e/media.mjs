// Reading recordings back with Debian's ffprobe/ffmpeg: streams, durations, PCM, frames.
import { execFileSync } from 'node:child_process';

export function probe(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-of', 'json', file]);
  return JSON.parse(out.toString());
}

/** Timestamp (s) of the last packet of a stream ('a' or 'v'), read packet by packet. */
export function lastPacketTime(file, stream) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-select_streams', stream, '-show_entries',
    'packet=pts_time,duration_time', '-of', 'csv=p=0', file]).toString().trim().split('\n');
  let last = 0;
  for (const line of out) {
    const [pts, dur] = line.split(',').map(Number);
    if (Number.isFinite(pts)) last = Math.max(last, pts + (Number.isFinite(dur) ? dur : 0));
  }
  return last;
}

/** Mono 48 kHz s16 PCM of the whole audio track (from `start` s for `len` s if given). */
export function decodeAudio(file, start = 0, len = null) {
  const args = ['-v', 'error', '-ss', String(start), '-i', file];
  if (len) args.push('-t', String(len));
  args.push('-f', 's16le', '-ac', '1', '-ar', '48000', '-');
  const buf = execFileSync('ffmpeg', args, { maxBuffer: 256 << 20 });
  return new Int16Array(buf.buffer, buf.byteOffset, buf.length >> 1);
}

/** Relative power of `freq` in `pcm` (Goertzel), normalised by the signal's total power. */
export function goertzel(pcm, freq, rate = 48000) {
  const k = (2 * Math.cos((2 * Math.PI * freq) / rate));
  let s1 = 0, s2 = 0, total = 0;
  for (let i = 0; i < pcm.length; i++) {
    const x = pcm[i] / 32768;
    total += x * x;
    const s0 = x + k * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - k * s1 * s2;
  return total > 0 ? (2 * power) / (pcm.length * total) : 0;
}

/** RGB of one decoded frame at `t` seconds (a seek), at pixel (x, y). */
export function frameAt(file, t, width, height) {
  const buf = execFileSync('ffmpeg', ['-v', 'error', '-ss', String(t), '-i', file, '-frames:v', '1',
    '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'], { maxBuffer: 64 << 20 });
  if (buf.length !== width * height * 3) throw new Error(`frame at ${t}s: ${buf.length} bytes`);
  return (x, y) => {
    const o = (Math.floor(y) * width + Math.floor(x)) * 3;
    return [buf[o], buf[o + 1], buf[o + 2]];
  };
}

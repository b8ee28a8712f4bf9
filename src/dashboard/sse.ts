import type { ServerResponse } from 'node:http';

/**
 * Server-sent events (the WHATWG "text/event-stream" format): one frame is optional `id:` and
 * `event:` lines, one `data:` line per line of the payload, and a blank line. A payload line may
 * not carry a CR or LF of its own, so the data is split on every line break (CRLF, CR or LF)
 * and the browser joins the lines again with LF.
 */
export function sseFrame(data: string, opts: { event?: string; id?: string | number } = {}): string {
  let out = '';
  if (opts.id !== undefined) out += `id: ${oneLine(String(opts.id), 'id')}\n`;
  if (opts.event !== undefined) out += `event: ${oneLine(opts.event, 'event')}\n`;
  for (const line of data.split(/\r\n|\r|\n/)) out += `data: ${line}\n`;
  return `${out}\n`;
}

/** A comment frame: ignored by EventSource, keeps proxies and idle timers from closing the stream. */
export function sseComment(text: string): string {
  return `: ${oneLine(text, 'comment')}\n\n`;
}

function oneLine(s: string, what: string): string {
  if (/[\r\n]/.test(s)) throw new Error(`sse: ${what} must be one line`);
  return s;
}

/** Open event streams: each gets the newest frame at once and every later one. */
export class SseHub {
  private readonly clients = new Set<ServerResponse>();
  private last: string | null = null;
  private seq = 0;
  private readonly beat: NodeJS.Timeout;

  constructor(heartbeatMs = 15_000) {
    this.beat = setInterval(() => this.write(sseComment('keepalive')), heartbeatMs);
    this.beat.unref();
  }

  get size(): number {
    return this.clients.size;
  }

  /** Takes over `res` as an event stream (sends the headers and the newest frame). */
  add(res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 1000\n\n');
    if (this.last !== null) res.write(this.last);
    this.clients.add(res);
    res.on('close', () => this.clients.delete(res));
  }

  /** Sends `data` as event `event` to every stream (and to streams that open later). */
  publish(event: string, data: string): void {
    this.last = sseFrame(data, { event, id: ++this.seq });
    this.write(this.last);
  }

  private write(frame: string): void {
    for (const c of this.clients) c.write(frame);
  }

  close(): void {
    clearInterval(this.beat);
    for (const c of this.clients) c.end();
    this.clients.clear();
  }
}

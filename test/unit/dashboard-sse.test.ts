import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { sseComment, sseFrame, SseHub } from '../../src/dashboard/sse';

/** Server-sent events framing, and the hub that sends the newest frame to streams old and new. */
describe('sseFrame', () => {
  it('writes id and event lines, one data line per payload line, and a blank line', () => {
    expect(sseFrame('{"a":1}')).toBe('data: {"a":1}\n\n');
    expect(sseFrame('x', { event: 'snapshot', id: 7 })).toBe('id: 7\nevent: snapshot\ndata: x\n\n');
    expect(sseFrame('a\nb\r\nc\rd')).toBe('data: a\ndata: b\ndata: c\ndata: d\n\n');
    expect(sseFrame('')).toBe('data: \n\n');
    expect(sseComment('keepalive')).toBe(': keepalive\n\n');
  });

  it('refuses an event name or id with a line break (it would end the field early)', () => {
    expect(() => sseFrame('x', { event: 'a\nb' })).toThrow(/event must be one line/);
    expect(() => sseFrame('x', { id: '1\r2' })).toThrow(/id must be one line/);
  });
});

describe('SseHub', () => {
  it('sends a new stream the newest frame at once, then every later one, and ends them on close', async () => {
    const hub = new SseHub();
    hub.publish('snapshot', '{"n":1}');
    const server = http.createServer((_req, res) => hub.add(res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      let body = '';
      const ended = new Promise<http.IncomingMessage>((resolve) => {
        http.get(`http://127.0.0.1:${port}/`, (res) => {
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve(res));
        });
      });
      const waitFor = async (s: string) => {
        for (let i = 0; i < 100 && !body.includes(s); i++) await new Promise((r) => setTimeout(r, 10));
      };
      await waitFor('{"n":1}');
      expect(hub.size).toBe(1);
      hub.publish('snapshot', '{"n":2}');
      await waitFor('{"n":2}');
      hub.close();
      const res = await ended;
      expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
      expect(res.headers['cache-control']).toBe('no-store');
      expect(body).toBe('retry: 1000\n\nid: 1\nevent: snapshot\ndata: {"n":1}\n\nid: 2\nevent: snapshot\ndata: {"n":2}\n\n');
    } finally {
      hub.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});

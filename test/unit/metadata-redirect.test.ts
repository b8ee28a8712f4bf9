/**
 * Metadata lookups do not follow redirects, checked with Node's real fetch against a real HTTP
 * server on loopback. The injected fetch only moves the request from the metadata address to the
 * loopback server (same path and query); method, headers and redirect mode are passed unchanged.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discoverPublicIp, type FetchLike } from '../../src/control/metadata';

let server: Server;
let base = '';
const hits: { method: string; url: string; headers: IncomingMessage['headers'] }[] = [];
/** What the server does for each path; `/elsewhere` is where redirects point. */
let routes: Record<string, (res: import('node:http').ServerResponse) => void> = {};

beforeAll(async () => {
  server = createServer((req, res) => {
    hits.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const path = (req.url ?? '').split('?')[0]!;
    const route = routes[path];
    if (route) route(res);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

/** The real global fetch, aimed at the loopback server instead of the metadata address. */
const toLoopback: FetchLike = (url, init) => {
  const u = new URL(url);
  return fetch(`${base}${u.pathname}${u.search}`, init);
};

const GCP_PATH = '/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip';
const AWS_TOKEN_PATH = '/latest/api/token';
const AWS_IP_PATH = '/latest/meta-data/public-ipv4';

describe('metadata lookups and redirects (real fetch, loopback server)', () => {
  it('an answer in place is taken (the set-up works)', async () => {
    hits.length = 0;
    routes = { [GCP_PATH]: (res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('203.0.113.9') };
    expect(await discoverPublicIp('gcp', toLoopback)).toEqual({ provider: 'gcp', ip: '203.0.113.9' });
    expect(hits.map((h) => h.headers['metadata-flavor'])).toEqual(['Google']);
  });

  it.each([301, 302, 303, 307, 308])('a %i redirect is not followed: no answer, nothing asked elsewhere', async (status) => {
    hits.length = 0;
    routes = {
      [GCP_PATH]: (res) => res.writeHead(status, { location: `${base}/elsewhere` }).end(),
      '/elsewhere': (res) => res.writeHead(200).end('198.51.100.66'),
    };
    expect(await discoverPublicIp('gcp', toLoopback)).toBeNull();
    expect(hits.map((h) => h.url.split('?')[0])).toEqual([GCP_PATH]);
  });

  it('aws: a redirected public-ipv4 request is not followed, so the token goes nowhere else', async () => {
    hits.length = 0;
    routes = {
      [AWS_TOKEN_PATH]: (res) => res.writeHead(200).end('tok-1'),
      [AWS_IP_PATH]: (res) => res.writeHead(307, { location: `${base}/elsewhere` }).end(),
      '/elsewhere': (res) => res.writeHead(200).end('198.51.100.66'),
    };
    expect(await discoverPublicIp('aws', toLoopback)).toBeNull();
    expect(hits.map((h) => `${h.method} ${h.url}`)).toEqual([`PUT ${AWS_TOKEN_PATH}`, `GET ${AWS_IP_PATH}`]);
  });

  it('a fetch that follows redirects anyway (ignores redirect: manual) still gives no answer', async () => {
    hits.length = 0;
    routes = {
      [GCP_PATH]: (res) => res.writeHead(302, { location: `${base}/elsewhere` }).end(),
      '/elsewhere': (res) => res.writeHead(200).end('198.51.100.66'),
    };
    const following: FetchLike = (url, init) => {
      const { redirect: _ignored, ...rest } = init;
      return toLoopback(url, rest);
    };
    expect(await discoverPublicIp('gcp', following)).toBeNull();
    expect(hits.map((h) => h.url.split('?')[0])).toEqual([GCP_PATH, '/elsewhere']); // it did follow
  });
});

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hostAllowed, parseHttpListen } from '../../src/dashboard/server';
import { isCladnetError } from '../../src/errors';

/** `cladnet dashboard`'s arguments: a bad --listen or --network is refused with ECONFIG before etcd is asked. */
describe('parseHttpListen', () => {
  it('takes IPv4, [IPv6] and localhost with a port', () => {
    expect(parseHttpListen('127.0.0.1:8080')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseHttpListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseHttpListen('localhost:9000')).toEqual({ host: 'localhost', port: 9000 });
  });

  it.each(['8080', '127.0.0.1', '127.0.0.1:', '127.0.0.1:65536', 'example.com:80', ':8080', '::1:80'])('refuses %s with ECONFIG naming listen', (s) => {
    try {
      parseHttpListen(s);
      expect.unreachable();
    } catch (e) {
      expect(isCladnetError(e, 'ECONFIG')).toBe(true);
      expect((e as Error).message).toMatch(/^listen: /);
    }
  });
});

const cli = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
describe('hostAllowed: the Host header must name the server by address (no DNS rebinding)', () => {
  it('takes IP literals and localhost, with or without a port', () => {
    for (const h of ['127.0.0.1:8080', '127.0.0.1', '198.18.0.1:80', '[::1]:8080', '[2001:db8::1]', 'localhost:8080', 'LOCALHOST', undefined]) {
      expect(hostAllowed(h), String(h)).toBe(true);
    }
  });
  it('refuses a DNS name (a rebinding page sends its own) and anything malformed', () => {
    for (const h of ['evil.example:8080', 'evil.example', 'localhost.evil.example', '127.0.0.1.nip.io:8080', '[evil]:80', '::1', '', '127.0.0.1:8080:1', '[::1]x', '1.2.3']) {
      expect(hostAllowed(h), h).toBe(false);
    }
  });
});

describe.skipIf(!fs.existsSync(cli))('cladnet dashboard (built CLI)', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'dashboard', ...args], { encoding: 'utf8', timeout: 10_000, env: { ...process.env, CLADNET_ETCD: 'http://127.0.0.1:1' } });

  it('exits 1 with [ECONFIG] for a bad --listen or --network, without waiting for etcd', () => {
    const a = run('--listen', 'nowhere', '--network', 'demo');
    expect(a.status).toBe(1);
    expect(a.stderr).toMatch(/listen: "nowhere" is not an address and port.*\[ECONFIG\]/);
    const b = run('--network', 'Not_A_Name');
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(/network: "Not_A_Name" is not a valid name.*\[ECONFIG\]/);
  });

  it('requires --network', () => {
    const r = run();
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--network/);
  });
});

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_FIELDS, autoWorkers, kebab, loadAgentConfig, readConfigFile, type AgentConfig } from '../../src/config/config';
import { CladnetError, isCladnetError } from '../../src/errors';

let dir: string;
let n = 0;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-config-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function file(text: string): string {
  const f = path.join(dir, `agent-${n++}.json`);
  fs.writeFileSync(f, text);
  return f;
}

/** The error a load throws; fails the test when it does not throw. */
function errorOf(fn: () => unknown): CladnetError {
  try {
    fn();
  } catch (e) {
    expect(isCladnetError(e, 'ECONFIG')).toBe(true);
    return e as CladnetError;
  }
  expect.unreachable('expected ECONFIG');
}

const NET = { network: 'demo', name: 'host-1' };

/** Good flags for the required/identity fields, leaving out the one under test. */
function othersThan(field: string): Record<string, string> {
  const flags: Record<string, string> = { ...NET };
  delete flags[field];
  return flags;
}

describe('loadAgentConfig', () => {
  it('fills every default', () => {
    const c = loadAgentConfig({ flags: { ...NET } });
    expect(c).toEqual({
      etcd: ['http://127.0.0.1:2379'],
      network: 'demo',
      name: 'host-1',
      interface: 'cladnet0',
      listenPort: 0,
      stateDir: '/var/lib/cladnet',
      socket: '/run/cladnet/cladnet.sock',
      logLevel: 'info',
      batch: 64,
      workers: autoWorkers(),
      crypto: 'auto',
      offload: true,
      udpOffload: true,
      advertise: [],
      cert: '/var/lib/cladnet/host.cert',
      etcdAllowInsecurePassword: false,
      stun: [],
      metadata: 'off',
      relay: false,
      advertiseRoutes: [],
      snatRoutes: false,
    } satisfies AgentConfig);
  });

  it('defaults the name to a valid form of the host name', () => {
    const c = loadAgentConfig({ flags: { network: 'demo' } });
    expect(c.name).toMatch(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/);
  });

  it('takes flag over env over file over default, per field', () => {
    const f = file(JSON.stringify({ network: 'from-file', listenPort: 1000, logLevel: 'warn', batch: 8 }));
    const env = { CLADNET_LISTEN_PORT: '2000', CLADNET_LOG_LEVEL: 'debug', CLADNET_NETWORK: 'from-env' };
    const flags = { listenPort: '3000', name: 'n' };
    const all = loadAgentConfig({ file: f, env, flags });
    expect([all.listenPort, all.logLevel, all.batch, all.network, all.interface]).toEqual([3000, 'debug', 8, 'from-env', 'cladnet0']);
    const noFlag = loadAgentConfig({ file: f, env, flags: { name: 'n' } });
    expect(noFlag.listenPort).toBe(2000);
    const noEnv = loadAgentConfig({ file: f, env: {}, flags: { name: 'n' } });
    expect([noEnv.listenPort, noEnv.logLevel, noEnv.network]).toEqual([1000, 'warn', 'from-file']);
    const none = loadAgentConfig({ flags: { ...NET } });
    expect(none.listenPort).toBe(0);
  });

  it('treats an empty environment variable as unset', () => {
    const f = file(JSON.stringify({ network: 'demo', listenPort: 1000 }));
    const c = loadAgentConfig({ file: f, env: { CLADNET_LISTEN_PORT: '' }, flags: { name: 'n' } });
    expect(c.listenPort).toBe(1000);
  });

  it('splits comma lists from strings and takes arrays from the file', () => {
    const f = file(JSON.stringify({ network: 'demo', etcd: ['http://10.0.0.1:2379', 'https://10.0.0.2:2379'], advertise: ['198.51.100.1'] }));
    const c = loadAgentConfig({ file: f, flags: { name: 'n' } });
    expect(c.etcd).toEqual(['http://10.0.0.1:2379', 'https://10.0.0.2:2379']);
    expect(c.advertise).toEqual(['198.51.100.1']);
    const e = loadAgentConfig({ env: { CLADNET_ETCD: ' http://a:1 , http://b:2,', CLADNET_ADVERTISE: '1.2.3.4,,5.6.7.8' }, flags: { ...NET } });
    expect(e.etcd).toEqual(['http://a:1', 'http://b:2']);
    expect(e.advertise).toEqual(['1.2.3.4', '5.6.7.8']);
  });

  it('returns a frozen object with frozen lists', () => {
    const c = loadAgentConfig({ flags: { ...NET, etcd: 'http://a:1' } });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.etcd)).toBe(true);
    expect(Object.isFrozen(c.advertise)).toBe(true);
    expect(() => {
      (c as { network: string }).network = 'x';
    }).toThrow(TypeError);
    expect(() => (c.etcd as string[]).push('http://b:2')).toThrow(TypeError);
    expect(c.network).toBe('demo');
  });

  it('requires a network and says where to give it', () => {
    const e = errorOf(() => loadAgentConfig({ flags: { name: 'n' } }));
    expect(e.field).toBe('network');
    expect(e.message).toBe('config: network (from nowhere): is required (--network, CLADNET_NETWORK or "network" in the config file)');
  });

  describe('names the field and its source for every kind of bad value', () => {
    // [field, bad value, flag, env, expected message tail, reported field]
    const cases: [string, unknown, string, string, string, string?][] = [
      ['listenPort', 'abc', '--listen-port', 'CLADNET_LISTEN_PORT', '"abc" is not an integer from 0 to 65535'],
      ['listenPort', '65536', '--listen-port', 'CLADNET_LISTEN_PORT', '"65536" is not an integer from 0 to 65535'],
      ['listenPort', '-1', '--listen-port', 'CLADNET_LISTEN_PORT', '"-1" is not an integer from 0 to 65535'],
      ['batch', '0', '--batch', 'CLADNET_BATCH', '"0" is not an integer from 1 to 1024'],
      ['batch', '1025', '--batch', 'CLADNET_BATCH', '"1025" is not an integer from 1 to 1024'],
      ['batch', '1.5', '--batch', 'CLADNET_BATCH', '"1.5" is not an integer from 1 to 1024'],
      ['name', 'Web_01', '--name', 'CLADNET_NAME', '"Web_01" must be 1-63 of a-z, 0-9 and inner hyphens'],
      ['network', '-x', '--network', 'CLADNET_NETWORK', '"-x" must be 1-63 of a-z, 0-9 and inner hyphens'],
      ['interface', 'a-very-long-ifname', '--interface', 'CLADNET_INTERFACE', '"a-very-long-ifname" is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)'],
      ['logLevel', 'verbose', '--log-level', 'CLADNET_LOG_LEVEL', '"verbose" is not one of fatal, error, warn, info, debug, trace, silent'],
      ['stateDir', '   ', '--state-dir', 'CLADNET_STATE_DIR', 'must not be empty'],
      ['socket', ' ', '--socket', 'CLADNET_SOCKET', 'must not be empty'],
      ['etcd', 'ftp://x:1', '--etcd', 'CLADNET_ETCD', '"ftp://x:1" must use http or https', 'etcd[0]'],
      ['etcd', 'http://a:1,nope', '--etcd', 'CLADNET_ETCD', '"nope" is not a URL (expected http://host:port)', 'etcd[1]'],
      ['etcd', ' , ', '--etcd', 'CLADNET_ETCD', 'needs at least one URL'],
      ['crypto', 'openssl', '--crypto', 'CLADNET_CRYPTO', '"openssl" is not one of auto, ffi, native, wasm'],
      ['stun', '198.51.100.1', '--stun', 'CLADNET_STUN', '"198.51.100.1" is not an IPv4 address and port (a.b.c.d:port)', 'stun[0]'],
      ['stun', '198.51.100.1:3478,stun.example.com:3478', '--stun', 'CLADNET_STUN', '"stun.example.com:3478" is not an IPv4 address and port (a.b.c.d:port)', 'stun[1]'],
      ['stun', '198.51.100.1:0', '--stun', 'CLADNET_STUN', '"198.51.100.1:0" is not an IPv4 address and port (a.b.c.d:port)', 'stun[0]'],
      ['metadata', 'ec2', '--metadata', 'CLADNET_METADATA', '"ec2" is not one of off, aws, gcp, azure, auto'],
      ['relay', 'maybe', '--relay', 'CLADNET_RELAY', '"maybe" is not a boolean (true/false)'],
      ['metricsListen', '127.0.0.1', '--metrics-listen', 'CLADNET_METRICS_LISTEN', '"127.0.0.1" is not an IP address and port (a.b.c.d:port or [v6]:port, port 1-65535)'],
      ['metricsListen', 'localhost:9821', '--metrics-listen', 'CLADNET_METRICS_LISTEN', '"localhost:9821" is not an IP address and port (a.b.c.d:port or [v6]:port, port 1-65535)'],
    ];

    it.each(cases)('%s = %j from a flag', (field, bad, flag, _env, why, reported) => {
      const e = errorOf(() => loadAgentConfig({ flags: { ...NET, [field]: bad } }));
      expect(e.field).toBe(reported ?? field);
      expect(e.message).toBe(`config: ${reported ?? field} (from ${flag}): ${why}`);
    });

    it.each(cases)('%s = %j from the environment', (field, bad, _flag, env, why, reported) => {
      const e = errorOf(() => loadAgentConfig({ env: { [env]: bad as string }, flags: othersThan(field) }));
      expect(e.field).toBe(reported ?? field);
      expect(e.message).toBe(`config: ${reported ?? field} (from ${env}): ${why}`);
    });

    it.each(cases)('%s = %j from the file', (field, bad, _flag, _env, why, reported) => {
      const f = file(JSON.stringify({ [field]: bad }));
      const e = errorOf(() => loadAgentConfig({ file: f, flags: othersThan(field) }));
      expect(e.field).toBe(reported ?? field);
      expect(e.message).toBe(`config: ${reported ?? field} (from ${f}): ${why}`);
    });

    it.each([
      ['listenPort', -1, '"-1" is not an integer from 0 to 65535'],
      ['listenPort', 80.5, '"80.5" is not an integer from 0 to 65535'],
      ['listenPort', true, 'expected a string, got true'],
      ['stateDir', 5, 'expected a string, got 5'],
      ['network', null, 'expected a string, got null'],
      ['etcd', ['http://a:1', 7], 'expected a string, got 7', 'etcd[1]'],
      ['advertise', [{}], 'expected a string, got {}', 'advertise[0]'],
      ['stun', ['198.51.100.1:3478', 3478], 'expected a string, got 3478', 'stun[1]'],
      ['stun', ['198.51.100.1:3478', '[2001:db8::1]:3478'], '"[2001:db8::1]:3478" is not an IPv4 address and port (a.b.c.d:port)', 'stun[1]'],
      ['metadata', false, 'expected a string, got false'],
      ['relay', 'sometimes', '"sometimes" is not a boolean (true/false)'],
    ] as [string, unknown, string, string?][])('JSON type errors: %s = %j', (field, bad, why, reported) => {
      const f = file(JSON.stringify({ [field]: bad }));
      const e = errorOf(() => loadAgentConfig({ file: f, flags: othersThan(field) }));
      expect(e.field).toBe(reported ?? field);
      expect(e.message).toBe(`config: ${reported ?? field} (from ${f}): ${why}`);
    });

    it('a bad flag is reported even when env and file are good', () => {
      const f = file(JSON.stringify({ network: 'demo', listenPort: 1 }));
      const e = errorOf(() => loadAgentConfig({ file: f, env: { CLADNET_LISTEN_PORT: '2' }, flags: { name: 'n', listenPort: 'x' } }));
      expect(e.message).toMatch(/\(from --listen-port\)/);
    });
  });

  describe('endpoint discovery and relay settings', () => {
    it('stun: a list of IPv4:port servers from a flag, the environment or the file', () => {
      expect(loadAgentConfig({ flags: { ...NET, stun: '198.51.100.1:3478, 203.0.113.2:19302' } }).stun).toEqual([
        '198.51.100.1:3478',
        '203.0.113.2:19302',
      ]);
      expect(loadAgentConfig({ env: { CLADNET_STUN: '198.51.100.1:3478' }, flags: { ...NET } }).stun).toEqual(['198.51.100.1:3478']);
      const f = file(JSON.stringify({ network: 'demo', stun: ['192.0.2.7:3478'] }));
      const c = loadAgentConfig({ file: f, flags: { name: 'n' } });
      expect(c.stun).toEqual(['192.0.2.7:3478']);
      expect(Object.isFrozen(c.stun)).toBe(true);
    });

    it('stun: a bad server is named by its index', () => {
      const e = errorOf(() => loadAgentConfig({ flags: { ...NET, stun: '198.51.100.1:3478,198.51.100.2:70000' } }));
      expect(e.field).toBe('stun[1]');
      expect(e.message).toBe('config: stun[1] (from --stun): "198.51.100.2:70000" is not an IPv4 address and port (a.b.c.d:port)');
    });

    it.each(['off', 'aws', 'gcp', 'azure', 'auto'])('metadata: %s is accepted', (v) => {
      expect(loadAgentConfig({ env: { CLADNET_METADATA: v }, flags: { ...NET } }).metadata).toBe(v);
    });

    it('metadata: anything else is refused, naming the field and the choices', () => {
      const e = errorOf(() => loadAgentConfig({ flags: { ...NET, metadata: 'AWS' } }));
      expect(e.field).toBe('metadata');
      expect(e.message).toBe('config: metadata (from --metadata): "AWS" is not one of off, aws, gcp, azure, auto');
    });

    it('relay: a boolean from a flag, the environment (true/false/1/0/yes/no/on/off) or the file', () => {
      expect(loadAgentConfig({ flags: { ...NET, relay: true } }).relay).toBe(true);
      expect(loadAgentConfig({ flags: { ...NET, relay: 'yes' } }).relay).toBe(true);
      expect(loadAgentConfig({ env: { CLADNET_RELAY: '1' }, flags: { ...NET } }).relay).toBe(true);
      expect(loadAgentConfig({ env: { CLADNET_RELAY: 'off' }, flags: { ...NET } }).relay).toBe(false);
      expect(loadAgentConfig({ file: file(JSON.stringify({ network: 'demo', relay: true })), flags: { name: 'n' } }).relay).toBe(true);
    });

    it('relay: a non-boolean is refused, naming the field', () => {
      const e = errorOf(() => loadAgentConfig({ env: { CLADNET_RELAY: 'please' }, flags: { ...NET } }));
      expect(e.field).toBe('relay');
      expect(e.message).toBe('config: relay (from CLADNET_RELAY): "please" is not a boolean (true/false)');
      const j = errorOf(() => loadAgentConfig({ file: file(JSON.stringify({ network: 'demo', relay: 1 })), flags: { name: 'n' } }));
      expect(j.field).toBe('relay');
      expect(j.message).toMatch(/config: relay \(from .*\): expected a string, got 1$/);
    });
  });

  it('takes workers as auto (the measured default) or 1-16 from flag, env or file, and names the field for anything else', () => {
    expect(loadAgentConfig({ flags: { ...NET, workers: '2' } }).workers).toBe(2);
    expect(loadAgentConfig({ flags: { ...NET }, env: { CLADNET_WORKERS: 'auto' } }).workers).toBe(autoWorkers());
    expect(loadAgentConfig({ flags: { ...NET }, file: file(JSON.stringify({ workers: 3 })) }).workers).toBe(3);
    for (const bad of ['0', '17', 'two', '1.5', '-1']) {
      const e = errorOf(() => loadAgentConfig({ flags: { ...NET, workers: bad } }));
      expect(e.message).toMatch(/workers \(from --workers\): .* is not auto or an integer from 1 to 16/);
      expect(e.field).toBe('workers');
    }
    expect(errorOf(() => loadAgentConfig({ flags: { ...NET }, file: file(JSON.stringify({ workers: true })) })).message).toMatch(/workers/);
  });

  it('chooses the default worker count by core count: 1 up to 2 cores, then cores - 1, at most 4', () => {
    expect([1, 2, 3, 4, 5, 8, 64].map((c) => autoWorkers(c))).toEqual([1, 1, 2, 3, 4, 4, 4]);
  });

  it('refuses an unknown key in the file, naming it, the file and the known keys', () => {
    const f = file(JSON.stringify({ network: 'demo', listen_port: 5 }));
    const e = errorOf(() => loadAgentConfig({ file: f }));
    expect(e.field).toBe('listen_port');
    expect(e.message).toBe(
      `config: listen_port (from ${f}): unknown setting (known: ${AGENT_FIELDS.map((x) => x.flag).join(', ')})`,
    );
    expect(e.message).toContain('listenPort');
  });

  it('maps camelCase fields to their flags', () => {
    expect(kebab('listenPort')).toBe('listen-port');
    expect(kebab('stateDir')).toBe('state-dir');
    expect(kebab('etcd')).toBe('etcd');
  });
});

describe('readConfigFile', () => {
  it('allows // comment lines, indented or not, and keeps // inside values', () => {
    const f = file(
      [
        '// cladnet agent configuration',
        '{',
        '  // which network to join',
        '  "network": "demo",',
        '\t// etcd endpoints',
        '  "etcd": ["http://10.0.0.1:2379"]',
        '}',
        '// end',
      ].join('\n'),
    );
    expect(readConfigFile(f)).toEqual({ network: 'demo', etcd: ['http://10.0.0.1:2379'] });
    expect(loadAgentConfig({ file: f, flags: { name: 'n' } }).etcd).toEqual(['http://10.0.0.1:2379']);
  });

  it('allows comments in a file with CRLF line ends', () => {
    const f = file('// c\r\n{\r\n  // c\r\n  "network": "demo"\r\n}\r\n');
    expect(readConfigFile(f)).toEqual({ network: 'demo' });
  });

  it('refuses invalid JSON, naming the file', () => {
    const f = file('{ "network": "demo", }');
    const e = errorOf(() => readConfigFile(f));
    expect(e.field).toBe('config');
    expect(e.message).toMatch(new RegExp(`^config: ${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not valid JSON: `));
  });

  it('refuses a trailing comment on a value line (only whole-line comments are allowed)', () => {
    const f = file('{\n  "network": "demo" // here\n}');
    expect(errorOf(() => readConfigFile(f)).message).toContain('is not valid JSON');
  });

  it.each(['[]', '"x"', '3', 'null'])('refuses a file holding %s instead of an object', (text) => {
    const f = file(text);
    const e = errorOf(() => readConfigFile(f));
    expect(e.message).toBe(`config: ${f} must hold a JSON object`);
  });

  it('refuses a file it cannot read', () => {
    const f = path.join(dir, 'missing.json');
    const e = errorOf(() => loadAgentConfig({ file: f }));
    expect(e.field).toBe('config');
    expect(e.message).toMatch(new RegExp(`^config: cannot read ${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: .*ENOENT`));
  });
});

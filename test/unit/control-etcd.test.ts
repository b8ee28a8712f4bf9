import { EtcdPermissionDeniedError, GRPCDeadlineExceededError, GRPCUnavailableError } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { createEtcd, etcdCall, isTransientEtcdError, normalizeEndpoint, toEtcdError } from '../../src/control/etcd';
import { CladnetError, isCladnetError } from '../../src/errors';

describe('normalizeEndpoint', () => {
  it.each([
    ['127.0.0.1:2379', 'http://127.0.0.1:2379'],
    ['http://10.0.0.1:2379/', 'http://10.0.0.1:2379'],
    ['https://etcd.example:4001', 'https://etcd.example:4001'],
    ['http://10.0.0.1', 'http://10.0.0.1:2379'],
  ])('%s -> %s', (input, out) => {
    expect(normalizeEndpoint(input)).toBe(out);
  });

  it.each(['ftp://x:1', 'http://x:1/v3', '', 'http://'])('refuses %j with ECONFIG naming etcd', (input) => {
    try {
      normalizeEndpoint(input);
      expect.unreachable();
    } catch (e) {
      expect(isCladnetError(e, 'ECONFIG')).toBe(true);
      expect((e as CladnetError).field).toBe('etcd');
    }
  });
});

describe('createEtcd', () => {
  it('refuses no endpoints and a bad timeout', () => {
    expect(() => createEtcd({ endpoints: [] })).toThrow(/at least one endpoint/);
    expect(() => createEtcd({ endpoints: ['127.0.0.1:1'], dialTimeoutMs: 0 })).toThrow(/dialTimeoutMs/);
  });
});

describe('error mapping', () => {
  it('connection failures become transient EETCD', () => {
    for (const err of [new GRPCUnavailableError('14 UNAVAILABLE: No connection established'), new GRPCDeadlineExceededError('4 DEADLINE_EXCEEDED')]) {
      const mapped = toEtcdError(err, 'get x');
      expect(mapped.code).toBe('EETCD');
      expect(mapped.transient).toBe(true);
      expect(mapped.message).toMatch(/^etcd: get x failed: .*is etcd reachable/);
      expect(mapped.cause).toBe(err);
    }
  });

  it('refusals become permanent EETCD', () => {
    const mapped = toEtcdError(new EtcdPermissionDeniedError('etcdserver: permission denied'), 'put x');
    expect([mapped.code, mapped.transient]).toEqual(['EETCD', false]);
    expect(isTransientEtcdError(new Error('boom'))).toBe(false);
  });

  it('CladnetErrors pass through unchanged', async () => {
    const own = new CladnetError('ENONET', 'network x does not exist');
    expect(toEtcdError(own, 'a')).toBe(own);
    await expect(etcdCall('a', () => Promise.reject(own))).rejects.toBe(own);
    await expect(etcdCall('a', () => Promise.resolve(3))).resolves.toBe(3);
  });
});

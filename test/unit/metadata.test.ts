import { describe, expect, it } from 'vitest';
import {
  AWS_PUBLIC_IPV4_URL,
  AWS_TOKEN_URL,
  AZURE_PUBLIC_IP_URL,
  discoverPublicIp,
  GCP_EXTERNAL_IP_URL,
  usableIpv4,
  type FetchLike,
} from '../../src/control/metadata';

/**
 * Only a fake fetch here: these tests never open a socket, and a fetch to anything the fake does
 * not know fails the test.
 */
type Init = Parameters<FetchLike>[1];
type Reply = { status: number; body: string } | 'throw' | 'hang';
interface Call {
  url: string;
  init: Init;
}

function fakeFetch(routes: Record<string, Reply | ((init: Init) => Reply)>): FetchLike & { calls: Call[] } {
  const calls: Call[] = [];
  const f = (async (url: string, init: Init) => {
    calls.push({ url, init });
    const route = routes[`${init.method ?? 'GET'} ${url}`];
    if (route === undefined) throw new Error(`unexpected fetch ${init.method ?? 'GET'} ${url}`);
    const reply = typeof route === 'function' ? route(init) : route;
    if (reply === 'throw') throw new TypeError('fetch failed: ECONNREFUSED');
    if (reply === 'hang') {
      return new Promise((_resolve, reject) => {
        init.signal?.addEventListener('abort', () => reject(new Error('aborted')));
      });
    }
    return { ok: reply.status >= 200 && reply.status < 300, status: reply.status, text: async () => reply.body };
  }) as FetchLike & { calls: Call[] };
  f.calls = calls;
  return f;
}

const ok = (body: string): Reply => ({ status: 200, body });
const AWS_GOOD = {
  [`PUT ${AWS_TOKEN_URL}`]: ok('tok-123'),
  [`GET ${AWS_PUBLIC_IPV4_URL}`]: (init: Init): Reply =>
    init.headers?.['X-aws-ec2-metadata-token'] === 'tok-123' ? ok('203.0.113.10') : { status: 401, body: '' },
};

describe('discoverPublicIp', () => {
  it('aws: IMDSv2 token first, then the public IPv4 with the token', async () => {
    const f = fakeFetch(AWS_GOOD);
    expect(await discoverPublicIp('aws', f)).toEqual({ provider: 'aws', ip: '203.0.113.10' });
    expect(f.calls.map((c) => `${c.init.method} ${c.url}`)).toEqual([`PUT ${AWS_TOKEN_URL}`, `GET ${AWS_PUBLIC_IPV4_URL}`]);
    expect(f.calls[0]!.init.headers).toEqual({ 'X-aws-ec2-metadata-token-ttl-seconds': '60' });
    expect(f.calls[0]!.init.signal).toBeInstanceOf(AbortSignal);
  });

  it('aws: no token, or no public address (404), gives null', async () => {
    expect(await discoverPublicIp('aws', fakeFetch({ [`PUT ${AWS_TOKEN_URL}`]: { status: 403, body: '' } }))).toBeNull();
    expect(await discoverPublicIp('aws', fakeFetch({ [`PUT ${AWS_TOKEN_URL}`]: ok('  ') }))).toBeNull();
    const noIp = fakeFetch({ [`PUT ${AWS_TOKEN_URL}`]: ok('t'), [`GET ${AWS_PUBLIC_IPV4_URL}`]: { status: 404, body: 'Not Found' } });
    expect(await discoverPublicIp('aws', noIp)).toBeNull();
  });

  it('gcp: external IP of the first access config, with Metadata-Flavor: Google', async () => {
    const f = fakeFetch({ [`GET ${GCP_EXTERNAL_IP_URL}`]: ok('34.1.2.3\n') });
    expect(await discoverPublicIp('gcp', f)).toEqual({ provider: 'gcp', ip: '34.1.2.3' });
    expect(f.calls[0]!.init.headers).toEqual({ 'Metadata-Flavor': 'Google' });
    expect(f.calls[0]!.url).toBe('http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip');
  });

  it('azure: public IP as text, with Metadata: true', async () => {
    const f = fakeFetch({ [`GET ${AZURE_PUBLIC_IP_URL}`]: ok('20.30.40.50') });
    expect(await discoverPublicIp('azure', f)).toEqual({ provider: 'azure', ip: '20.30.40.50' });
    expect(f.calls[0]!.init.headers).toEqual({ Metadata: 'true' });
    expect(f.calls[0]!.url).toContain('api-version=2021-02-01&format=text');
  });

  it('azure: an empty answer (no public IP) gives null', async () => {
    expect(await discoverPublicIp('azure', fakeFetch({ [`GET ${AZURE_PUBLIC_IP_URL}`]: ok('') }))).toBeNull();
  });

  it('auto: asks every provider and takes the one that answers', async () => {
    const f = fakeFetch({
      [`PUT ${AWS_TOKEN_URL}`]: 'throw',
      [`GET ${GCP_EXTERNAL_IP_URL}`]: 'throw',
      [`GET ${AZURE_PUBLIC_IP_URL}`]: ok('20.30.40.50'),
    });
    expect(await discoverPublicIp('auto', f)).toEqual({ provider: 'azure', ip: '20.30.40.50' });
    expect(new Set(f.calls.map((c) => c.url))).toEqual(new Set([AWS_TOKEN_URL, GCP_EXTERNAL_IP_URL, AZURE_PUBLIC_IP_URL]));
  });

  it('auto: a provider that hangs does not delay one that answers, and is aborted', async () => {
    const f = fakeFetch({ [`PUT ${AWS_TOKEN_URL}`]: 'hang', [`GET ${GCP_EXTERNAL_IP_URL}`]: 'hang', [`GET ${AZURE_PUBLIC_IP_URL}`]: ok('20.30.40.50') });
    const t0 = Date.now();
    expect(await discoverPublicIp('auto', f, 5000)).toEqual({ provider: 'azure', ip: '20.30.40.50' });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(f.calls.every((c) => c.init.signal?.aborted)).toBe(true);
  });

  it('auto: nobody answers, null', async () => {
    const f = fakeFetch({
      [`PUT ${AWS_TOKEN_URL}`]: { status: 404, body: '' },
      [`GET ${GCP_EXTERNAL_IP_URL}`]: 'throw',
      [`GET ${AZURE_PUBLIC_IP_URL}`]: ok('<html>not azure</html>'),
    });
    expect(await discoverPublicIp('auto', f)).toBeNull();
  });

  it('times out at timeoutMs, aborting the request, even when fetch ignores the signal', async () => {
    const hanging = fakeFetch({ [`GET ${GCP_EXTERNAL_IP_URL}`]: 'hang' });
    const t0 = Date.now();
    expect(await discoverPublicIp('gcp', hanging, 50)).toBeNull();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(hanging.calls[0]!.init.signal?.aborted).toBe(true);
    const deaf: FetchLike = () => new Promise(() => {}); // never settles, ignores abort
    expect(await discoverPublicIp('azure', deaf, 50)).toBeNull();
  });

  it('never throws: a fetch that throws synchronously, a body that fails, an unknown provider', async () => {
    const sync: FetchLike = () => {
      throw new Error('boom');
    };
    expect(await discoverPublicIp('aws', sync)).toBeNull();
    const badBody: FetchLike = async () => ({ ok: true, status: 200, text: () => Promise.reject(new Error('reset')) });
    expect(await discoverPublicIp('gcp', badBody)).toBeNull();
    expect(await discoverPublicIp('digitalocean' as 'aws', sync)).toBeNull();
  });

  it.each([
    ['not an address', 'hello'],
    ['IPv6', '2001:db8::1'],
    ['octet out of range', '300.1.2.3'],
    ['leading zero', '01.2.3.4'],
    ['two addresses', '1.2.3.4\n5.6.7.8'],
    ['unspecified', '0.0.0.0'],
    ['loopback', '127.0.0.1'],
    ['link-local', '169.254.169.254'],
    ['multicast', '224.0.0.1'],
    ['broadcast', '255.255.255.255'],
    ['a huge body', '1.2.3.4' + ' '.repeat(100)],
  ])('refuses an answer that is %s', async (_name, body) => {
    expect(await discoverPublicIp('gcp', fakeFetch({ [`GET ${GCP_EXTERNAL_IP_URL}`]: ok(body) }))).toBeNull();
  });
});

describe('usableIpv4', () => {
  it('trims and keeps dotted unicast IPv4', () => {
    expect(usableIpv4(' 198.51.100.4\r\n')).toBe('198.51.100.4');
    expect(usableIpv4('10.0.0.1')).toBe('10.0.0.1');
    expect(usableIpv4('')).toBeNull();
  });
});

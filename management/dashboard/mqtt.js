// A minimal MQTT 3.1.1 client over WebSocket: CONNECT, SUBSCRIBE, PUBLISH (QoS 0), PINGREQ.
const te = new TextEncoder();
const td = new TextDecoder();

function utf8(s) {
  const b = te.encode(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

function remainingLength(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

function packet(first, body) {
  return new Uint8Array([first, ...remainingLength(body.length), ...body]);
}

export function encodeConnect({ clientId, keepalive = 60, clean = true, username, password }) {
  let flags = clean ? 0x02 : 0;
  const payload = [...utf8(clientId)];
  if (username !== undefined && username !== '') { flags |= 0x80; payload.push(...utf8(username)); }
  if (password !== undefined && password !== '') { flags |= 0x40; payload.push(...utf8(password)); }
  const body = [...utf8('MQTT'), 4, flags, keepalive >> 8, keepalive & 0xff, ...payload];
  return packet(0x10, body);
}

export function encodeSubscribe(packetId, topic, qos = 0) {
  return packet(0x82, [packetId >> 8, packetId & 0xff, ...utf8(topic), qos]);
}

export function encodePublish(topic, payload, { retain = false } = {}) {
  const bytes = typeof payload === 'string' ? te.encode(payload) : payload;
  return packet(0x30 | (retain ? 1 : 0), [...utf8(topic), ...bytes]);
}

export const encodePingreq = () => new Uint8Array([0xc0, 0x00]);
export const encodeDisconnect = () => new Uint8Array([0xe0, 0x00]);

// Splits a byte stream into packets; returns [packets, rest].
export function decode(buffer) {
  const packets = [];
  let i = 0;
  while (i + 2 <= buffer.length) {
    let mult = 1, len = 0, j = i + 1, byte;
    do {
      if (j >= buffer.length) return [packets, buffer.slice(i)];
      byte = buffer[j++];
      len += (byte & 0x7f) * mult;
      mult *= 128;
    } while (byte & 0x80);
    if (j + len > buffer.length) break;
    packets.push(parse(buffer[i], buffer.subarray(j, j + len)));
    i = j + len;
  }
  return [packets, buffer.slice(i)];
}

function parse(first, body) {
  const type = first >> 4;
  switch (type) {
    case 2: return { type: 'connack', sessionPresent: !!(body[0] & 1), returnCode: body[1] };
    case 3: {
      const qos = (first >> 1) & 3;
      const tlen = (body[0] << 8) | body[1];
      const topic = td.decode(body.subarray(2, 2 + tlen));
      let k = 2 + tlen, packetId;
      if (qos > 0) { packetId = (body[k] << 8) | body[k + 1]; k += 2; }
      const payload = body.slice(k);
      return { type: 'publish', topic, qos, retain: !!(first & 1), packetId, payload };
    }
    case 9: return { type: 'suback', packetId: (body[0] << 8) | body[1], codes: [...body.slice(2)] };
    case 13: return { type: 'pingresp' };
    default: return { type: 'other', code: type };
  }
}

export class MqttWsClient extends EventTarget {
  constructor(url, options) {
    super();
    this.url = url;
    this.options = options;
    this.nextId = 1;
    this.rest = new Uint8Array(0);
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  connect() {
    const ws = new WebSocket(this.url, ['mqtt']);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => ws.send(encodeConnect(this.options));
    ws.onmessage = (ev) => this.receive(new Uint8Array(ev.data));
    ws.onerror = () => this.emit('error', 'websocket error');
    ws.onclose = () => { clearInterval(this.pinger); this.emit('close'); };
  }

  receive(bytes) {
    const all = new Uint8Array(this.rest.length + bytes.length);
    all.set(this.rest);
    all.set(bytes, this.rest.length);
    const [packets, rest] = decode(all);
    this.rest = rest;
    for (const p of packets) {
      if (p.type === 'connack') {
        if (p.returnCode === 0) {
          const every = Math.max(1, (this.options.keepalive || 60) / 2) * 1000;
          this.pinger = setInterval(() => this.send(encodePingreq()), every);
          this.emit('connect', p);
        } else {
          this.emit('error', `connection refused (code ${p.returnCode})`);
          this.ws.close();
        }
      } else if (p.type === 'publish') {
        this.emit('message', { ...p, text: td.decode(p.payload) });
      } else {
        this.emit(p.type, p);
      }
    }
  }

  send(bytes) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes); }

  subscribe(topic, qos = 0) {
    const id = this.nextId++;
    if (this.nextId > 0xffff) this.nextId = 1;
    this.send(encodeSubscribe(id, topic, qos));
    return id;
  }

  publish(topic, payload, opts) { this.send(encodePublish(topic, payload, opts)); }

  ping() { this.send(encodePingreq()); }

  close() {
    clearInterval(this.pinger);
    this.send(encodeDisconnect());
    if (this.ws) this.ws.close();
  }
}

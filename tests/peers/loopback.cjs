// Preload for Node test peers (node --require ./loopback.cjs): every listen() that names a port
// but no host binds 127.0.0.1 instead of every interface. server-everything calls
// app.listen(PORT) without a host; nothing a test starts may listen beyond loopback.
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (isPort(first) && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (first && typeof first === 'object' && !Array.isArray(first) && 'port' in first && !first.host && !first.path) {
    args[0] = { ...first, host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};

'use strict';

/** Body sizes by the names the cells use. */
const BODY_BYTES = {
  '1k': 1024,
  '32k': 32 * 1024,
  '1m': 1024 * 1024,
  '50m': 50 * 1024 * 1024,
};

const HEADER_BLOCK = Buffer.from(
  [
    'Received: from mail.example.com (mail.example.com [192.0.2.1])',
    '\tby mx.example.net with ESMTPS; Wed, 3 Dec 2025 18:00:00 +0000',
    'From: Sender <sender@example.com>',
    'To: One <rcpt1@example.net>, Two <rcpt2@example.org>',
    'Subject: queue benchmark',
    'Date: Wed, 3 Dec 2025 18:00:00 +0000',
    'Message-ID: <bench@example.com>',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    '',
  ].join('\r\n'),
  'latin1',
);

/**
 * A body of `bytes` bytes in 76-character lines. Every page is written,
 * so the whole body is resident and counts in RSS.
 */
function makeBody(bytes) {
  const text = 'abcdefghijklmnopqrstuvwxyz0123456789+/'.repeat(2);
  const line = Buffer.from(text + '\r\n', 'latin1');
  const body = Buffer.allocUnsafeSlow(bytes);
  for (let at = 0; at < bytes; at += line.length) {
    line.copy(body, at, 0, Math.min(line.length, bytes - at));
  }
  return body;
}

/**
 * The envelope every contender stores: two recipients (so that
 * setRecipientsDelivered([0]) changes something), client details, a
 * realistic header block and a body of `bytes` bytes. Built with
 * fromParts, so the body is held once, not copied.
 */
function makeEnvelope(Envelope, bytes) {
  return Envelope.fromParts(HEADER_BLOCK, makeBody(bytes), {
    sender: 'sender@example.com',
    recipients: ['rcpt1@example.net', 'rcpt2@example.org'],
    client: {
      ip: '192.0.2.1',
      host: 'mail.example.com',
      name: 'mail.example.com',
      protocol: 'ESMTPS',
      auth: null,
    },
    receiver: 'mx.example.net',
    timestamp: 1764784800,
  });
}

module.exports = { BODY_BYTES, makeEnvelope };

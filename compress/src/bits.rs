//! LSB-first bit packing.

/// Appends values of up to 32 bits, least significant bit first.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// Appends the low `bits` bits of `v` (`bits <= 32`, higher bits of `v` must be zero).
    pub(crate) fn push(&mut self, v: u32, bits: u32) {
        self.acc |= u64::from(v) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Flushes a partial last byte (padding bits are zero).
    pub(crate) fn finish(self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads values written by [`BitWriter`] from exactly the bytes it produced.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    /// The next `bits` bits (`bits <= 32`), or `None` past the end.
    pub(crate) fn read(&mut self, bits: u32) -> Option<u32> {
        while self.n < bits {
            let b = *self.data.get(self.pos)?;
            self.acc |= u64::from(b) << self.n;
            self.pos += 1;
            self.n += 8;
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.n -= bits;
        Some(v)
    }

    /// True if every byte was consumed and the padding bits are zero (canonical encoding).
    pub(crate) fn finished_cleanly(&self) -> bool {
        self.pos == self.data.len() && self.acc == 0
    }
}

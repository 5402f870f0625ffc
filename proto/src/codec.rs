//! The protobuf codec of every service, with smaller per-stream buffers than tonic's.
//!
//! tonic gives each stream an 8 KiB encode buffer and an 8 KiB decode buffer up front. Agents'
//! messages are a few hundred bytes and each agent holds one stream for as long as it runs, so
//! those buffers were 16 KiB of the manager's 59 KiB per agent. Ours start at
//! [`BUFFER_SIZE`] and grow, as tonic's do, for a larger message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of each stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;

/// Bytes encoded on a stream before the encoder yields to let them be sent (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with buffers of [`BUFFER_SIZE`]; the generated services use it.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

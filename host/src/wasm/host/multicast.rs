//! `skyhost:service/multicast`: channels.

use crate::wasm::bindings::skyhost::service::multicast;
use crate::wasm::state::ServiceState;

impl From<crate::multicast::ChannelError> for multicast::ChannelError {
    fn from(e: crate::multicast::ChannelError) -> Self {
        use crate::multicast::ChannelError as E;
        match e {
            E::NoSuchChannel(_) => multicast::ChannelError::NoSuchChannel,
            E::Exists(_) => multicast::ChannelError::Exists,
            E::Invalid(_) => multicast::ChannelError::Invalid,
            E::NotOwner(_) => multicast::ChannelError::NotOwner,
            E::NodeDown(_) => multicast::ChannelError::NodeDown,
        }
    }
}

impl multicast::Host for ServiceState {
    fn new(&mut self, number: Option<u32>) -> Result<u32, multicast::ChannelError> {
        Ok(self.parts.multicast.create(self.tenant, number)?)
    }

    fn delete(&mut self, channel: u32) -> Result<(), multicast::ChannelError> {
        let kernel = &self.kernel;
        Ok(self.parts.multicast.delete(kernel, self.tenant, channel)?)
    }

    fn publish(&mut self, channel: u32, payload: Vec<u8>) -> Result<(), multicast::ChannelError> {
        if self.check_size(&payload).is_err() {
            // The same limit as a send: refused before anything is copied on.
            return Err(multicast::ChannelError::Invalid);
        }
        Ok(self
            .parts
            .multicast
            .publish(self.tenant, channel, self.address, payload.into())?)
    }

    fn subscribe(&mut self, channel: u32) -> Result<(), multicast::ChannelError> {
        Ok(self
            .parts
            .multicast
            .subscribe(&self.kernel, self.tenant, channel, self.address)?)
    }

    fn unsubscribe(&mut self, channel: u32) {
        self.parts
            .multicast
            .unsubscribe(&self.kernel, self.tenant, channel, self.address);
    }

    fn cluster_channel(
        &mut self,
        node: String,
        channel: u32,
    ) -> Result<u32, multicast::ChannelError> {
        Ok(self
            .parts
            .multicast
            .cluster_channel(self.tenant, &node, channel)?)
    }
}

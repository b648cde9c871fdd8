//! Skynet's multicast: channels that carry one publish to many subscribers,
//! on this node and on the other nodes of its harbor.
//!
//! A [`Channel`] can have a handler of its own: its publishes then go to
//! that closure instead of [`Service::handle`](crate::Service::handle).
//! Without one they arrive at `handle` as messages of kind
//! [`kind::MULTICAST`](crate::kind::MULTICAST) whose `session` is the
//! channel id. A publish from source 0 with an empty payload says the
//! channel is gone.

use std::rc::Rc;

use serde::Serialize;

use crate::node::encode;
use crate::{Message, runtime, sys};

pub use crate::bindings::skyhost::service::multicast::ChannelError;

/// A multicast channel, by id. Copy it freely; it does not own the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Channel(pub u32);

impl Channel {
    /// Makes a channel on this node with a free number.
    ///
    /// # Errors
    /// As the host says (see [`ChannelError`]).
    pub fn new() -> Result<Channel, ChannelError> {
        sys::multicast::new(None).map(Channel)
    }

    /// Makes a channel on this node with `number` (1..2^24), so others can
    /// know its id in advance: `(number << 8) | harbor id`.
    ///
    /// # Errors
    /// [`ChannelError::Exists`] or [`ChannelError::Invalid`].
    pub fn with_number(number: u32) -> Result<Channel, ChannelError> {
        sys::multicast::new(Some(number)).map(Channel)
    }

    /// The channel `id` made on cluster node `node` (its id there), as this
    /// node knows it: subscribe to it and publish on it like a local one.
    ///
    /// # Errors
    /// [`ChannelError::NodeDown`] when this node is in no cluster.
    pub fn cluster(node: &str, id: u32) -> Result<Channel, ChannelError> {
        sys::multicast::cluster_channel(node, id).map(Channel)
    }

    /// Deletes the channel (made on this node); its subscribers are told.
    ///
    /// # Errors
    /// [`ChannelError::NotOwner`] or [`ChannelError::NoSuchChannel`].
    pub fn delete(self) -> Result<(), ChannelError> {
        runtime::set_channel_handler(self.0, None);
        sys::multicast::delete(self.0)
    }

    /// Publishes `value` (postcard) to every subscriber.
    ///
    /// # Errors
    /// As the host says, or [`ChannelError::Invalid`] if it did not encode.
    pub fn publish<T: Serialize + ?Sized>(self, value: &T) -> Result<(), ChannelError> {
        let payload = encode(value).map_err(|_| ChannelError::Invalid)?;
        self.publish_raw(&payload)
    }

    /// Publishes raw bytes.
    ///
    /// # Errors
    /// As the host says.
    pub fn publish_raw(self, payload: &[u8]) -> Result<(), ChannelError> {
        crate::queued::flush_quietly();
        sys::multicast::publish(self.0, payload)
    }

    /// Subscribes this service; publishes arrive at `handle`.
    ///
    /// # Errors
    /// As the host says.
    pub fn subscribe(self) -> Result<(), ChannelError> {
        sys::multicast::subscribe(self.0)
    }

    /// Subscribes this service with a handler of the channel's own, called
    /// for each publish (and once with source 0 when the channel is gone).
    ///
    /// # Errors
    /// As the host says.
    pub fn subscribe_with(self, handler: impl Fn(Message) + 'static) -> Result<(), ChannelError> {
        runtime::set_channel_handler(self.0, Some(Rc::new(handler)));
        let subscribed = sys::multicast::subscribe(self.0);
        if subscribed.is_err() {
            runtime::set_channel_handler(self.0, None);
        }
        subscribed
    }

    /// Stops receiving the channel.
    pub fn unsubscribe(self) {
        runtime::set_channel_handler(self.0, None);
        sys::multicast::unsubscribe(self.0);
    }
}

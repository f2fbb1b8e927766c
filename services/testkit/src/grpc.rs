//! Asking a running service what any gRPC client could: its health and, through server
//! reflection, which services it offers.

use std::{net::SocketAddr, time::Duration};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// A channel to `addr` that gives up on connecting after a second.
pub fn channel(addr: SocketAddr) -> Channel {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(endpoint) => endpoint,
        Err(error) => panic!("{addr} is not a valid endpoint: {error}"),
    };
    endpoint.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(5)).connect_lazy()
}

/// The health `service` reports at `addr`, or the error that kept it from answering.
pub async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel(addr));
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(response.into_inner().status())
}

/// The services listed by gRPC server reflection at `addr`, as grpcurl would list them.
pub async fn reflected_services(addr: SocketAddr) -> Result<Vec<String>, tonic::Status> {
    let mut client = ServerReflectionClient::new(channel(addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    let mut names = Vec::new();
    while let Some(response) = responses.next().await {
        if let Some(MessageResponse::ListServicesResponse(list)) = response?.message_response {
            names.extend(list.service.into_iter().map(|service| service.name));
        }
    }
    names.sort();
    Ok(names)
}

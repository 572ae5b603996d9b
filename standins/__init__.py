"""Local HTTP stand-ins for the AWS APIs the service calls (Bedrock Runtime, Rekognition)."""

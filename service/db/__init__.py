"""Persistence shared by the gateway and the worker: tables and sessions."""

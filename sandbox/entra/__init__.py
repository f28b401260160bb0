"""Entra ID (Azure AD) token service for the client-credentials grant."""
